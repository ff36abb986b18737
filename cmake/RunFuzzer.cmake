# Runs one libFuzzer target for SECONDS seconds, starting from the committed seed corpus SEEDS
# and keeping what it finds in WORK (a build directory, never the source tree).
file(MAKE_DIRECTORY ${WORK})
execute_process(
  COMMAND ${FUZZER} -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048
          -print_final_stats=1 -artifact_prefix=${WORK}/ ${WORK} ${SEEDS}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${FUZZER} failed (exit ${rc}); the crashing input (crash-*) is in ${WORK}")
endif()
