{{/*
Names. With the release named "cairn" the prefix is "cairn", so the
objects are cairn-meta and cairn-chunkserver.
*/}}
{{- define "cairn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cairn.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* StatefulSet and headless Service names (also the pods' DNS subdomain). */}}
{{- define "cairn.meta.fullname" -}}
{{- printf "%s-meta" (include "cairn.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "cairn.chunkserver.fullname" -}}
{{- printf "%s-chunkserver" (include "cairn.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "cairn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels; call with (dict "ctx" $ "component" "meta"). */}}
{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cairn.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cairn.labels" -}}
helm.sh/chart: {{ include "cairn.chart" .ctx }}
{{ include "cairn.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cairn
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/*
Pod template labels: no chart version, so upgrading the chart alone does
not restart every replica.
*/}}
{{- define "cairn.podLabels" -}}
{{ include "cairn.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cairn
{{- end }}

{{- define "cairn.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Every meta replica's gRPC address, comma separated, built from
meta.replicas: cairn-meta-0.cairn-meta.$(POD_NAMESPACE).svc.cluster.local:7001,...
The namespace is left to the kubelet's $(POD_NAMESPACE) expansion, like
--advertise, so the strings match byte for byte (cairn-meta skips the
entry equal to its own --advertise) and the manifests stay right when
kustomize moves them to another namespace. Used by meta (--join) and by the
chunkservers (--meta), which run in the same namespace.
*/}}
{{- define "cairn.meta.peers" -}}
{{- $name := include "cairn.meta.fullname" . }}
{{- $peers := list }}
{{- range $i := until (int .Values.meta.replicas) }}
{{- $peers = append $peers (printf "%s-%d.%s.$(POD_NAMESPACE).svc.%s:%d" $name $i $name $.Values.clusterDomain (int $.Values.meta.port)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/* The pod's own name and namespace, for $(POD_NAME) and $(POD_NAMESPACE) in args. */}}
{{- define "cairn.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/*
Pod-level security: the image's non-root user, and volumes group-owned by
it. OnRootMismatch: a chunkserver volume holds millions of files, and a
recursive chown on every start would take minutes.
*/}}
{{- define "cairn.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
{{- end }}

{{- define "cairn.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
Anti-affinity over nodes; call with (dict "ctx" $ "component" "meta" "mode" "required"),
and "value" "csi.controller.antiAffinity" where the value is not <component>.antiAffinity.
*/}}
{{- define "cairn.antiAffinity" -}}
podAntiAffinity:
{{- if eq .mode "required" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "cairn.selectorLabels" . | nindent 10 }}
{{- else if eq .mode "preferred" }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "cairn.selectorLabels" . | nindent 12 }}
{{- else }}
{{- fail (printf "%s must be \"required\" or \"preferred\", not %q" (.value | default (printf "%s.antiAffinity" .component)) .mode) }}
{{- end }}
{{- end }}

{{/*
The CSI driver's name. Fixed, not a value: cairn-csi reports it in
GetPluginInfo (frontends/csi DRIVER_NAME), the node-driver-registrar
registers the plugin with the kubelet under that name, and the CSIDriver
object, the StorageClasses' provisioner and the plugin directory must all
say the same.
*/}}
{{- define "cairn.csi.driverName" -}}
csi.cairn.io
{{- end }}

{{- define "cairn.csi.controller.fullname" -}}
{{- printf "%s-csi-controller" (include "cairn.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "cairn.csi.node.fullname" -}}
{{- printf "%s-csi-node" (include "cairn.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* The ClusterRole, its binding and the Roles of the external-provisioner. */}}
{{- define "cairn.csi.provisioner.fullname" -}}
{{- printf "%s-csi-provisioner" (include "cairn.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The kubelet's directory on the nodes, checked and without a trailing slash. */}}
{{- define "cairn.csi.kubeletDir" -}}
{{- $d := .Values.csi.kubeletDir | trimSuffix "/" }}
{{- if not (hasPrefix "/" $d) }}
{{- fail (printf "csi.kubeletDir must be an absolute path, not %q" .Values.csi.kubeletDir) }}
{{- end }}
{{- $d }}
{{- end }}

{{/*
The node plugin's directory on the host: the kubelet finds the plugin's
socket there (the registrar tells it the path) and it is the node
container's /csi.
*/}}
{{- define "cairn.csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "cairn.csi.kubeletDir" .) (include "cairn.csi.driverName" .) }}
{{- end }}

{{/*
The socket cairn-csi serves on, as the sidecars see it (--csi-address) in
the volume they share with it at /csi; cairn-csi's --endpoint is
unix://<this>.
*/}}
{{- define "cairn.csi.socket" -}}
/csi/csi.sock
{{- end }}

{{/* Whether any StorageClass of the chart is encrypted ("true" or ""). */}}
{{- define "cairn.csi.anyEncrypted" -}}
{{- range .Values.csi.storageClasses }}
{{- if eq (toString .parameters.encryption) "true" }}true{{ end }}
{{- end }}
{{- end }}
