# syntax=docker/dockerfile:1
# qtrain for CPU workers and the coordinator (image qtrain-cpu), on Debian 12. Build from the
# repository root:
#   docker build -f deploy/docker/cpu.Dockerfile -t qtrain-cpu:0.1.0 .
# The image holds qtrain, qtrain-coordinator and qtrain-worker in /usr/local/bin and runs as the
# unprivileged user qtrain (UID and GID 10001, the runAsUser of deploy/k8s).

# --- Build: the build packages of scripts/setup.sh (not those only the tests use) -------------
FROM debian:12.11 AS build
ARG DEBIAN_FRONTEND=noninteractive
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
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DQTRAIN_CUDA=OFF \
      -DQTRAIN_BUILD_TESTS=OFF -DQTRAIN_BUILD_BENCH=OFF \
 && cmake --build build --target qtrain qtrain-coordinator qtrain-worker -j "$(nproc)" \
 && deploy/docker/runtime-packages.sh build/bin/qtrain build/bin/qtrain-coordinator \
      build/bin/qtrain-worker > build/runtime-packages.txt

# --- Runtime: the libraries the binaries link and nothing else ---------------------------------
FROM debian:12.11-slim AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# The packages runtime-packages.sh reports for the three binaries (tests/deploy checks that this
# list covers them).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 libgloo0 libgomp1 libgrpc++1.51 libgrpc29 libopenblas0-pthread \
      libprometheus-cpp-core1.0 libprotobuf32 libsqlite3-0 libssl3 \
      libstdc++6 libutf8proc2 libyaml-cpp0.7 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 qtrain \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/qtrain --no-create-home \
      --shell /usr/sbin/nologin qtrain \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/qtrain /srv/qtrain
COPY --from=build /src/build/bin/qtrain /src/build/bin/qtrain-coordinator \
     /src/build/bin/qtrain-worker /usr/local/bin/
# Fail the build if a library the binaries need is missing from this stage.
RUN ! ldd /usr/local/bin/qtrain /usr/local/bin/qtrain-coordinator /usr/local/bin/qtrain-worker \
      | grep 'not found'
USER 10001:10001
WORKDIR /var/lib/qtrain
# Coordinator gRPC, coordinator metrics, worker metrics.
EXPOSE 7070 9401 9402
CMD ["/usr/local/bin/qtrain", "--help"]
