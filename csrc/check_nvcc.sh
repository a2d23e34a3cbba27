#!/usr/bin/env bash
# Compile check of the CUDA half of args_fast._C on a machine with nvcc but no GPU and no CUDA torch:
#  1. nvcc -c each .cu for $ARCH (default sm_90) with warnings as errors; ptxas prints registers/spills;
#  2. link both objects with a driver that calls the kernels.h launchers (catches missing symbols);
#  3. g++ -fsyntax-only of bindings.cpp with ARGS_FAST_WITH_CUDA (c10/cuda headers ship in every
#     torch wheel, CPU ones included), so the torch-facing CUDA code is type-checked too.
# Usage: csrc/check_nvcc.sh   (env: ARCH, NVCC, CXX, PYTHON)
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-sm_90}
NVCC=${NVCC:-nvcc}
CXX=${CXX:-g++}
PYTHON=${PYTHON:-python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== nvcc $($NVCC --version | grep -o 'release [0-9.]*'), arch $ARCH"
for f in select_commit topk; do
  $NVCC -std=c++17 -O3 -arch="$ARCH" -Werror all-warnings -Xptxas -v -c "csrc/$f.cu" -o "$out/$f.o" 2>&1 |
    grep -E "Compiling entry|registers|spill|error|warning" || true
  test -s "$out/$f.o"
done

cat > "$out/driver.cpp" <<'EOF'
#include "kernels.h"
int main() {  // never run: only has to link
  args_fast::SelectCommitArgs a{};
  args_fast::CacheView c{};
  const char* e1 = args_fast::launch_select_commit(a, c, c, nullptr);
  const char* e2 = args_fast::launch_topk(nullptr, args_fast::DType::F32, 0, 0, 0, 1, nullptr, nullptr, nullptr, nullptr);
  return int(args_fast::topk_workspace_bytes(1, 1, 1)) + (e1 != nullptr) + (e2 != nullptr);
}
EOF
$NVCC -std=c++17 -arch="$ARCH" -Icsrc "$out/driver.cpp" "$out/select_commit.o" "$out/topk.o" -o "$out/driver"
echo "== launchers link: ok"

read -r -a incs < <($PYTHON -c "import sysconfig; from torch.utils import cpp_extension as ce
print(' '.join('-I' + p for p in [sysconfig.get_paths()['include'], *ce.include_paths()]))")
cuda_home=${CUDA_HOME:-$($PYTHON -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')")}
cuda_inc="${cuda_home:-/usr/local/cuda}/include"
$CXX -std=c++20 -fsyntax-only -DARGS_FAST_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DTORCH_EXTENSION_NAME=_C \
  -DTORCH_API_INCLUDE_EXTENSION_H "${incs[@]}" -I"$cuda_inc" -Icsrc -Wall -Wno-unused-parameter csrc/bindings.cpp
echo "== bindings.cpp with ARGS_FAST_WITH_CUDA: compiles"
echo "check_nvcc: OK"
