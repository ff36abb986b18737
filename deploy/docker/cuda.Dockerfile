# syntax=docker/dockerfile:1
# qtrain for CUDA workers (image qtrain-cuda): built on NVIDIA's CUDA devel image, run on the
# matching CUDA runtime image (same CUDA version and Ubuntu release). Build from the repository
# root:
#   docker build -f deploy/docker/cuda.Dockerfile -t qtrain-cuda:0.1.0 .
# CUDA_ARCHITECTURES: 80 (A100) and 90 (H100) by default. The GPU nodes' driver must support
# CUDA_VERSION. Runs as the unprivileged user qtrain (UID and GID 10001, as in deploy/k8s).
ARG CUDA_VERSION=12.6.3
ARG UBUNTU=ubuntu24.04

# --- Build: the build packages of scripts/setup.sh (their Ubuntu names are the same) ----------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG DEBIAN_FRONTEND=noninteractive
ARG CUDA_ARCHITECTURES="80;90"
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git python3 \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev \
      prometheus-cpp-dev \
      libsqlite3-dev libopenblas-dev libgloo-dev libutf8proc-dev \
      nlohmann-json3-dev libyaml-cpp-dev libcli11-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Ubuntu 24.04 has the same library versions as Debian 12 (abseil 20220623, gRPC 1.51, protobuf
# 3.21) but a newer GCC: its new warnings must not fail a release build (QTRAIN_WERROR=OFF).
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DQTRAIN_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" -DQTRAIN_WERROR=OFF \
      -DQTRAIN_BUILD_TESTS=OFF -DQTRAIN_BUILD_BENCH=OFF \
 && cmake --build build --target qtrain qtrain-coordinator qtrain-worker qtrain_cuda_plugin \
      -j "$(nproc)" \
 && deploy/docker/runtime-packages.sh build/bin/qtrain build/bin/qtrain-coordinator \
      build/bin/qtrain-worker build/bin/libqtrain_cuda_plugin.so > build/runtime-packages.txt

# --- Runtime: the CUDA runtime image plus the libraries the binaries link ---------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu names its runtime library packages differently from Debian 12 (t64 suffixes), so the
# list is the one runtime-packages.sh computed from the built binaries; the CUDA libraries come
# with the runtime image (already installed, apt keeps them).
COPY --from=build /src/build/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -r apt-get install -y --no-install-recommends < /tmp/runtime-packages.txt \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt
RUN groupadd --system --gid 10001 qtrain \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/qtrain --no-create-home \
      --shell /usr/sbin/nologin qtrain \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/qtrain /srv/qtrain
COPY --from=build /src/build/bin/qtrain /src/build/bin/qtrain-coordinator \
     /src/build/bin/qtrain-worker /usr/local/bin/
# `qtrain train` on world.device cuda loads the CUDA backend from here (<bin>/../lib/qtrain).
COPY --from=build /src/build/bin/libqtrain_cuda_plugin.so /usr/local/lib/qtrain/
# Fail the build if a library the binaries need is missing from this stage (the CUDA driver
# library comes from the node at run time, through the NVIDIA container toolkit).
RUN ! ldd /usr/local/bin/qtrain /usr/local/bin/qtrain-coordinator /usr/local/bin/qtrain-worker \
      /usr/local/lib/qtrain/libqtrain_cuda_plugin.so \
      | grep 'not found' | grep -v 'libcuda\.so'
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/qtrain
EXPOSE 7070 9401 9402
CMD ["/usr/local/bin/qtrain", "--help"]
