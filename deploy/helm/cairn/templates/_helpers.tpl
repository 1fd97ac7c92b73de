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

{{/* Anti-affinity over nodes; call with (dict "ctx" $ "component" "meta" "mode" "required"). */}}
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
{{- fail (printf "%s.antiAffinity must be \"required\" or \"preferred\", not %q" .component .mode) }}
{{- end }}
{{- end }}
