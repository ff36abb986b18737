#!/usr/bin/env bash
# Checks the CUDA kernels library without a GPU: every object holds machine code (an ELF cubin)
# for every architecture of the build, and no kernel uses a stack frame or local memory
# (STACK:0 LOCAL:0), which is where register spills and local arrays go.
#   CUOBJDUMP=cuobjdump CUDA_ARCHS="80;90" check_cuda_objects.sh libqtrain_cuda_kernels.a
set -euo pipefail
lib=${1:?usage: check_cuda_objects.sh LIBRARY}
cuobjdump=${CUOBJDUMP:-cuobjdump}
archs=${CUDA_ARCHS:?CUDA_ARCHS is not set}
[[ -f $lib ]] || { echo "no such library: $lib" >&2; exit 1; }

elves=$("$cuobjdump" --list-elf "$lib")
objects=$(ar t "$lib" | grep -c '\.o$')
[[ $objects -gt 0 ]] || { echo "$lib holds no objects" >&2; exit 1; }
status=0
for arch in ${archs//;/ }; do
  arch=${arch%-real}
  arch=${arch%-virtual}
  count=$(grep -c "\.sm_${arch}\.cubin" <<<"$elves" || true)
  if [[ $count -ne $objects ]]; then
    echo "sm_${arch}: $count of $objects objects have its machine code" >&2
    status=1
  else
    echo "sm_${arch}: machine code in all $objects objects"
  fi
done

usage=$("$cuobjdump" -res-usage "$lib")
kernels=$(grep -c 'Function' <<<"$usage" || true)
[[ $kernels -gt 0 ]] || { echo "no kernels found in $lib" >&2; exit 1; }
spilling=$(grep -A1 'Function' <<<"$usage" | grep -B1 -E '(STACK|LOCAL):[1-9]' | grep 'Function' || true)
if [[ -n $spilling ]]; then
  echo "kernels with a stack frame or local memory (spills or local arrays):" >&2
  echo "$spilling" >&2
  status=1
else
  echo "$kernels kernel images, none with a stack frame or local memory"
fi
exit $status
