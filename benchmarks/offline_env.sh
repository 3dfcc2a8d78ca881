# Sourced by the device-host scripts (gpu.sh, rl_bench_protections.sh): on our GPU hosts Ray comes
# from the offline bundle made by ../shared/gpu/offline-wheels.sh .whl, installed once into
# /tmp/site when .whl exists; elsewhere ftray and Ray are expected to be importable already.
if [ -d .whl ]; then
  [ -d /tmp/site/ray ] || python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
