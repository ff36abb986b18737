# Declares a library and its test together, in the style of absl_cc_library / absl_cc_test.
#
#   qtrain_cc_library(NAME qtrain_common SRCS a.cc HDRS a.h DEPS absl::status)
#   qtrain_cc_test(NAME common_test SRCS a_test.cc DEPS qtrain_common [LABELS unit])
#   qtrain_cc_binary(NAME qtrain SRCS main.cc DEPS ...)
#
# Every target gets the project's include root (so headers are included as "common/foo.h"),
# the generated-code root, and the project's warning flags.

set(QTRAIN_WARNING_FLAGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  # Clang's "loop not vectorized" notes on `omp simd` loops are about speed, not correctness,
  # and sanitizer instrumentation routinely blocks the vectorization.
  list(APPEND QTRAIN_WARNING_FLAGS -Wno-pass-failed)
endif()
if(QTRAIN_WERROR)
  list(APPEND QTRAIN_WARNING_FLAGS -Werror)
endif()

function(_qtrain_common_target_setup target)
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${QTRAIN_WARNING_FLAGS}>)
endfunction()

function(qtrain_cc_library)
  cmake_parse_arguments(Q "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  if(Q_SRCS)
    add_library(${Q_NAME} STATIC ${Q_SRCS} ${Q_HDRS})
    target_link_libraries(${Q_NAME} PUBLIC ${Q_DEPS})
    _qtrain_common_target_setup(${Q_NAME})
  else()
    add_library(${Q_NAME} INTERFACE ${Q_HDRS})
    target_link_libraries(${Q_NAME} INTERFACE ${Q_DEPS})
    target_include_directories(${Q_NAME} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  endif()
endfunction()

function(qtrain_cc_binary)
  cmake_parse_arguments(Q "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${Q_NAME} ${Q_SRCS})
  target_link_libraries(${Q_NAME} PRIVATE ${Q_DEPS})
  _qtrain_common_target_setup(${Q_NAME})
endfunction()

# The numeric code: the loops over tensors and token streams that the tests run at length. A
# build that compiles everything else unoptimized to save compile time (the sanitizer build:
# clang with ASan at -O0 compiles in about half the time of -O1) still optimizes these targets
# with QTRAIN_NUMERIC_OPT, so that its tests do not run many times slower.
function(qtrain_numeric_code)
  if(QTRAIN_NUMERIC_OPT)
    foreach(target ${ARGN})
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${QTRAIN_NUMERIC_OPT}>)
    endforeach()
  endif()
endfunction()

# Build speed of the tests (CI compiles every test twice: the default and the sanitizer build).
# - A test's own sources are compiled at -O1 in the optimized builds: a quarter less compile time
#   (gcc -O3 and clang -O2 with ASan alike) while the code under test, the libraries, keeps the
#   build's flags; test code is glue (fixtures, processes, assertions) and runs no slower. The
#   flag comes after CMAKE_CXX_FLAGS_<CONFIG>, so the last -O wins.
# - Every test reuses one precompiled header (tests/test_pch.h, built by qtrain_test_pch): about
#   a quarter less again. A PCH is only valid for identical flags (clang refuses any other), so
#   every test and the PCH target get the same options through qtrain_test_flags.
# - ccache caches PCH users only with this sloppiness, so the tests' launcher sets it.
function(_qtrain_test_build_speed target)
  target_link_libraries(${target} PRIVATE qtrain_test_flags)
  # (Not where QTRAIN_NUMERIC_OPT is set: there the tests take the build's own flags.)
  if(NOT QTRAIN_NUMERIC_OPT)
    target_compile_options(${target} PRIVATE
      $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CONFIG:Release,RelWithDebInfo,MinSizeRel>>:-O1>)
  endif()
  if(CMAKE_CXX_COMPILER_LAUNCHER MATCHES "ccache")
    set_target_properties(${target} PROPERTIES CXX_COMPILER_LAUNCHER
      "${CMAKE_COMMAND};-E;env;CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime;${CMAKE_CXX_COMPILER_LAUNCHER}")
  endif()
endfunction()

# The tests' shared precompiled header and the flags every test compiles with (see above).
function(qtrain_test_pch_target)
  add_library(qtrain_test_flags INTERFACE)
  target_link_libraries(qtrain_test_flags INTERFACE
    GTest::gmock GTest::gtest absl::status absl::statusor absl::strings absl::time
    nlohmann_json::nlohmann_json OpenMP::OpenMP_CXX Threads::Threads PkgConfig::UTF8PROC)
  target_compile_options(qtrain_test_flags INTERFACE -pthread)
  # Compiled as the tests are: position-independent executable code (-fPIE, not -fPIC).
  add_library(qtrain_test_pch OBJECT ${PROJECT_SOURCE_DIR}/tests/test_pch.cc)
  set_target_properties(qtrain_test_pch PROPERTIES POSITION_INDEPENDENT_CODE OFF)
  target_compile_options(qtrain_test_pch PRIVATE -fPIE)
  _qtrain_common_target_setup(qtrain_test_pch)
  _qtrain_test_build_speed(qtrain_test_pch)
  target_precompile_headers(qtrain_test_pch PRIVATE ${PROJECT_SOURCE_DIR}/tests/test_pch.h)
endfunction()

# Tests are built only when QTRAIN_BUILD_TESTS is on. Each test binary goes to build/tests/ and
# every GoogleTest case becomes its own ctest entry, labelled (default label: unit). Tests run in
# the source root with QTRAIN_SOURCE_DIR and QTRAIN_BIN_DIR (build/bin) set by tests/test_main.cc.
function(qtrain_cc_test)
  cmake_parse_arguments(Q "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT QTRAIN_BUILD_TESTS)
    return()
  endif()
  if(NOT Q_LABELS)
    set(Q_LABELS unit)
  endif()
  if(NOT Q_TIMEOUT)
    set(Q_TIMEOUT 300)
  endif()
  add_executable(${Q_NAME} ${Q_SRCS})
  target_link_libraries(${Q_NAME} PRIVATE ${Q_DEPS} qtrain_test_main)
  _qtrain_common_target_setup(${Q_NAME})
  _qtrain_test_build_speed(${Q_NAME})
  target_precompile_headers(${Q_NAME} REUSE_FROM qtrain_test_pch)
  set_target_properties(${Q_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  gtest_discover_tests(${Q_NAME}
    DISCOVERY_MODE PRE_TEST
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    PROPERTIES LABELS "${Q_LABELS}" TIMEOUT ${Q_TIMEOUT})
  add_dependencies(qtrain_all_tests ${Q_NAME})
  if("unit" IN_LIST Q_LABELS)
    add_dependencies(qtrain_unit_tests ${Q_NAME})
  endif()
endfunction()

# Registers test binary NAME's tests once more, prefixed "portable/", with the CPU kernels'
# AVX-512 paths turned off (QTRAIN_CPU_NO_AVX512=1), so that the portable loops other CPUs run are
# checked on any CPU.
function(qtrain_portable_tests NAME)
  if(NOT QTRAIN_BUILD_TESTS)
    return()
  endif()
  gtest_discover_tests(${NAME}
    DISCOVERY_MODE PRE_TEST
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    TEST_PREFIX "portable/"
    PROPERTIES LABELS unit TIMEOUT 300 ENVIRONMENT "QTRAIN_CPU_NO_AVX512=1")
endfunction()

# A libFuzzer target. Built only in a fuzz build (QTRAIN_FUZZ=ON, clang); `ctest -L fuzz` runs
# each one for QTRAIN_FUZZ_SECONDS over its seed corpus.
function(qtrain_cc_fuzz)
  cmake_parse_arguments(Q "" "NAME;CORPUS" "SRCS;DEPS" ${ARGN})
  if(NOT QTRAIN_FUZZ)
    return()
  endif()
  add_executable(${Q_NAME} ${Q_SRCS})
  target_link_libraries(${Q_NAME} PRIVATE ${Q_DEPS})
  target_link_options(${Q_NAME} PRIVATE -fsanitize=fuzzer)
  _qtrain_common_target_setup(${Q_NAME})
  set_target_properties(${Q_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/fuzz)
  set(work ${PROJECT_BINARY_DIR}/fuzz/${Q_NAME}.corpus)
  add_test(NAME ${Q_NAME}
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
      ${CMAKE_COMMAND} -DFUZZER=$<TARGET_FILE:${Q_NAME}> -DWORK=${work} -DSEEDS=${Q_CORPUS}
        -DSECONDS=${QTRAIN_FUZZ_SECONDS} -P ${PROJECT_SOURCE_DIR}/cmake/RunFuzzer.cmake)
  set_tests_properties(${Q_NAME} PROPERTIES LABELS fuzz TIMEOUT 600)
  add_dependencies(qtrain_all_fuzzers ${Q_NAME})
endfunction()
