# qtrain: `make demo` runs the demo, `make test` builds and runs every test (see README.md).
# Both install missing Debian packages first (scripts/setup.sh, idempotent).
#
# Build trees: build/ (the default build; binaries in build/bin) and build/sanitize (clang +
# ASan/UBSan with libFuzzer's coverage instrumentation): the fuzz targets and the unit tests
# under the sanitizers share its libraries, so CI compiles them once.

BUILD ?= build
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 10
CMAKE_FLAGS ?=
GENERATOR := $(shell command -v ninja >/dev/null 2>&1 && echo Ninja || echo "Unix Makefiles")
SANITIZERS := address,undefined
# The sanitizer builds keep line tables only (what their stack traces print), not full debug
# information: it halves their compile and link time. They compile at -O0 (under ASan about half
# the compile time of -O1), except the numeric code (the kernels, the model, the tokenizer, the
# collectives' sums, training and evaluation: qtrain_numeric_code), which stays at -O1, as
# AddressSanitizer's documentation advises, so that the tests running it are not many times
# slower.
SANITIZER_BUILD := -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O0 -gline-tables-only -DNDEBUG" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O0 -gline-tables-only -DNDEBUG" \
  -DQTRAIN_NUMERIC_OPT=-O1

.PHONY: all setup build test unit-test sanitize-configure fuzz asan demo bench-data-parallel clean

all: build

setup:
	@scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -G "$(GENERATOR)" $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# Every test: unit and integration tests of the default build, then each fuzz target briefly.
test: unit-test fuzz

unit-test: build
	ctest --test-dir $(BUILD) -L 'unit|integration' --output-on-failure -j $(JOBS)

SANITIZE_BUILD := $(BUILD)/sanitize
sanitize-configure: setup
	CC=clang CXX=clang++ cmake -S . -B $(SANITIZE_BUILD) -G "$(GENERATOR)" $(SANITIZER_BUILD) \
	  -DQTRAIN_FUZZ=ON -DQTRAIN_SANITIZE=$(SANITIZERS) -DQTRAIN_CUDA=OFF -DQTRAIN_BUILD_BENCH=OFF \
	  -DQTRAIN_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CMAKE_FLAGS)

fuzz: sanitize-configure
	cmake --build $(SANITIZE_BUILD) --target qtrain_all_fuzzers -j $(JOBS)
	ctest --test-dir $(SANITIZE_BUILD) -L fuzz --output-on-failure -j $(JOBS)

# Unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (CI runs this after `make test`).
asan: sanitize-configure
	cmake --build $(SANITIZE_BUILD) --target qtrain_unit_tests -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	  ctest --test-dir $(SANITIZE_BUILD) -L unit --output-on-failure -j $(JOBS)

demo: build
	scripts/demo.sh $(BUILD)

# Data-parallel throughput (1x1, 2x1, 1x2 workers x threads) beside PyTorch DDP; needs torch and
# transformers (pip). Flags for bench/data_parallel.py go in BENCH_FLAGS.
bench-data-parallel: setup
	cmake -S . -B $(BUILD) -G "$(GENERATOR)" -DQTRAIN_BUILD_BENCH=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD) --target data_parallel_bench -j $(JOBS)
	python3 bench/data_parallel.py --bench $(BUILD)/bin/data_parallel_bench --out $(BUILD)/bench \
	  $(BENCH_FLAGS)

clean:
	rm -rf $(BUILD)
