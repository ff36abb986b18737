# The Prometheus and Grafana checks.
#
# promtool and prometheus come from Debian's `prometheus` package, the Python tools from PyPI
# (scripts/setup.sh installs both). When one is missing, its tests are still registered and fail
# saying what is missing, rather than vanishing from the suite.
find_package(Python3 COMPONENTS Interpreter)
find_program(QTRAIN_PROMTOOL promtool)
find_program(QTRAIN_PROMETHEUS prometheus)

set(_qtrain_prometheus_dir ${PROJECT_SOURCE_DIR}/deploy/prometheus)
set(_qtrain_dashboard ${PROJECT_SOURCE_DIR}/deploy/grafana/qtrain.json)
set(_qtrain_deploy_checks ${CMAKE_CURRENT_SOURCE_DIR})

# A test that fails at once, naming the tool it lacks.
function(qtrain_missing_tool_test NAME TOOL)
  set(script ${CMAKE_CURRENT_BINARY_DIR}/missing_${TOOL}.cmake)
  file(WRITE ${script}
    "message(FATAL_ERROR \"${TOOL} was not found when CMake ran: install it (scripts/setup.sh) and reconfigure\")\n")
  add_test(NAME ${NAME} COMMAND ${CMAKE_COMMAND} -P ${script})
  set_tests_properties(${NAME} PROPERTIES LABELS integration)
endfunction()

# add_test(NAME name COMMAND ...) when every tool in TOOLS was found, else a failing test.
function(qtrain_monitoring_test NAME)
  cmake_parse_arguments(ARG "" "WORKING_DIRECTORY" "TOOLS;COMMAND" ${ARGN})
  foreach(tool IN LISTS ARG_TOOLS)
    if(tool STREQUAL "python3" AND NOT Python3_Interpreter_FOUND)
      qtrain_missing_tool_test(${NAME} python3)
      return()
    elseif(tool STREQUAL "promtool" AND NOT QTRAIN_PROMTOOL)
      qtrain_missing_tool_test(${NAME} promtool)
      return()
    elseif(tool STREQUAL "prometheus" AND NOT QTRAIN_PROMETHEUS)
      qtrain_missing_tool_test(${NAME} prometheus)
      return()
    endif()
  endforeach()
  if(NOT ARG_WORKING_DIRECTORY)
    set(ARG_WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  endif()
  add_test(NAME ${NAME} COMMAND ${ARG_COMMAND} WORKING_DIRECTORY ${ARG_WORKING_DIRECTORY})
  set_tests_properties(${NAME} PROPERTIES LABELS integration TIMEOUT 120)
endfunction()

# The configuration: promtool check config (on a copy with file discovery for a promtool
# without Kubernetes discovery), its shape, and its relabelling in a real Prometheus.
qtrain_monitoring_test(prometheus_config_check TOOLS python3 promtool prometheus
  COMMAND ${Python3_EXECUTABLE} ${_qtrain_deploy_checks}/check_prometheus_config.py
          ${_qtrain_prometheus_dir}/prometheus.yml --promtool ${QTRAIN_PROMTOOL}
          --prometheus ${QTRAIN_PROMETHEUS})
# The checker refuses configurations whose relabelling is wrong.
foreach(case
    "keeps_every_pod|qtrain-coordinator keeps"
    "ignores_port_annotation|qtrain-worker keeps")
  string(FIND "${case}" "|" bar)
  string(SUBSTRING "${case}" 0 ${bar} fixture)
  math(EXPR start "${bar} + 1")
  string(SUBSTRING "${case}" ${start} -1 expected)
  qtrain_monitoring_test(prometheus_config_check_refuses_${fixture}
    TOOLS python3 promtool prometheus
    COMMAND ${Python3_EXECUTABLE} ${_qtrain_deploy_checks}/check_prometheus_config.py
            ${_qtrain_deploy_checks}/fixtures/prometheus_${fixture}/prometheus.yml
            --promtool ${QTRAIN_PROMTOOL} --prometheus ${QTRAIN_PROMETHEUS}
            --expect-error ${expected})
endforeach()
qtrain_monitoring_test(prometheus_rules_check TOOLS promtool
  COMMAND ${QTRAIN_PROMTOOL} check rules ${_qtrain_prometheus_dir}/rules.yml)
qtrain_monitoring_test(prometheus_rules_test TOOLS promtool
  WORKING_DIRECTORY ${_qtrain_prometheus_dir}
  COMMAND ${QTRAIN_PROMTOOL} test rules ${_qtrain_prometheus_dir}/rules_test.yml)

# The dashboard: the Grafana schema round trip, the sanity rules and every expression parsed.
qtrain_monitoring_test(grafana_dashboard_check TOOLS python3 promtool
  COMMAND ${Python3_EXECUTABLE} ${_qtrain_deploy_checks}/check_dashboard.py ${_qtrain_dashboard}
          --promtool ${QTRAIN_PROMTOOL})

# The checker refuses each broken fixture for the reason it was broken for.
foreach(case
    "misspelled_target_key|/panels[1]/targets[0]/legendFromat: lost in the round trip"
    "misspelled_panel_key|/panels[1]/gridpos: lost in the round trip"
    "missing_schema_key|/panels[1]/transparent: added by the round trip"
    "duplicate_panel_id|/panels[1]: id 1 is also the id of /panels[0]"
    "hardcoded_datasource|/panels[1] (Loss by stage): its datasource is not"
    "panel_without_targets|/panels[1] (Loss by stage): no target with an expression"
    "unfiltered_stage|qtrain_eval_loss does not filter stage"
    "bad_promql|/panels[1]/targets[0]: could not parse expression")
  string(FIND "${case}" "|" bar)
  string(SUBSTRING "${case}" 0 ${bar} fixture)
  math(EXPR start "${bar} + 1")
  string(SUBSTRING "${case}" ${start} -1 expected)
  qtrain_monitoring_test(grafana_dashboard_check_refuses_${fixture} TOOLS python3 promtool
    COMMAND ${Python3_EXECUTABLE} ${_qtrain_deploy_checks}/check_dashboard.py
            ${_qtrain_deploy_checks}/fixtures/dashboard_${fixture}.json
            --promtool ${QTRAIN_PROMTOOL} --expect-error ${expected})
endforeach()
# The valid fixture the broken ones are made from passes: they fail for their one defect.
qtrain_monitoring_test(grafana_dashboard_check_valid_fixture TOOLS python3 promtool
  COMMAND ${Python3_EXECUTABLE} ${_qtrain_deploy_checks}/check_dashboard.py
          ${_qtrain_deploy_checks}/fixtures/dashboard_valid.json --promtool ${QTRAIN_PROMTOOL})
