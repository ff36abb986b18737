# The Kubernetes manifest checks (deploy/k8s) and the pod security checker with its fixtures.
# Tools: kubectl (kustomize), kubernetes-validate, cloudcoil-models-prometheus-operator,
# jsonschema, PyYAML (scripts/setup.sh).
if(NOT QTRAIN_BUILD_TESTS)
  return()
endif()
find_package(Python3 COMPONENTS Interpreter)
set(_qtrain_deploy ${CMAKE_CURRENT_SOURCE_DIR})
set(_qtrain_k8s ${PROJECT_SOURCE_DIR}/deploy/k8s)
if(NOT Python3_Interpreter_FOUND)
  # The checks are Python: one failing test says so instead of the checks vanishing.
  set(_script ${CMAKE_CURRENT_BINARY_DIR}/kubernetes_checks_need_python3.cmake)
  file(WRITE ${_script} "message(FATAL_ERROR \"python3 was not found when CMake ran: install it \
(scripts/setup.sh) and reconfigure\")\n")
  add_test(NAME k8s_checks_need_python3 COMMAND ${CMAKE_COMMAND} -P ${_script})
  set_tests_properties(k8s_checks_need_python3 PROPERTIES LABELS integration)
  return()
endif()

function(_qtrain_deploy_test name)
  add_test(NAME ${name} COMMAND ${Python3_EXECUTABLE} ${ARGN}
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES LABELS integration TIMEOUT 300)
endfunction()

# Each overlay renders, validates (Kubernetes 1.30 schemas, strict; PodMonitor types) and meets
# the restricted Pod Security Standard, with consistent references and no real token.
foreach(overlay cpu-dev gpu)
  _qtrain_deploy_test(k8s_overlay_${overlay}
    ${_qtrain_deploy}/check_manifests.py overlay ${_qtrain_k8s}/overlays/${overlay})
endforeach()
_qtrain_deploy_test(k8s_overlays_differ
  ${_qtrain_deploy}/check_manifests.py overlays ${_qtrain_k8s}/overlays/cpu-dev
  ${_qtrain_k8s}/overlays/gpu)
# The checks catch broken copies of the manifests (and a missing kubectl).
_qtrain_deploy_test(k8s_checks_fail_on_broken_manifests ${_qtrain_deploy}/check_manifests_test.py)

# The PodMonitor schema accepts a valid PodMonitor and refuses misspelled keys.
set(_pm ${_qtrain_deploy}/fixtures/podmonitor)
_qtrain_deploy_test(k8s_podmonitor_valid
  ${_qtrain_deploy}/check_manifests.py podmonitor ${_pm}/valid.yaml)
_qtrain_deploy_test(k8s_podmonitor_misspelled_key
  ${_qtrain_deploy}/check_manifests.py podmonitor --expect-invalid intervall
  ${_pm}/misspelled-key.yaml)
_qtrain_deploy_test(k8s_podmonitor_misspelled_spec_key
  ${_qtrain_deploy}/check_manifests.py podmonitor --expect-invalid podMetricEndpoints
  ${_pm}/misspelled-spec-key.yaml)

# Pod security fixtures: valid Kubernetes objects (so each fails for its control alone); the
# passing one passes; each failing one, named CONTROL or CONTROL--VARIANT, violates exactly CONTROL.
set(_pss ${_qtrain_deploy}/fixtures/pss)
file(GLOB _pss_fail CONFIGURE_DEPENDS ${_pss}/fail/*.yaml)
file(GLOB _pss_pass CONFIGURE_DEPENDS ${_pss}/pass/*.yaml)
_qtrain_deploy_test(pss_fixtures_are_valid_objects
  ${_qtrain_deploy}/check_manifests.py validate ${_pss_pass} ${_pss_fail})
foreach(fixture ${_pss_pass})
  get_filename_component(_name ${fixture} NAME_WE)
  _qtrain_deploy_test(pss_pass_${_name} ${_qtrain_deploy}/check_pod_security.py ${fixture})
endforeach()
foreach(fixture ${_pss_fail})
  get_filename_component(_name ${fixture} NAME_WE)
  string(REGEX REPLACE "--.*$" "" _control ${_name})
  _qtrain_deploy_test(pss_fail_${_name}
    ${_qtrain_deploy}/check_pod_security.py --expect ${_control} ${fixture})
endforeach()

# The Dockerfiles (no Docker daemon needed): pinned images, the build packages of
# scripts/setup.sh, the non-root user of the manifests, and runtime packages that cover the
# libraries the built binaries link.
set(_qtrain_binaries)
foreach(bin qtrain qtrain-coordinator qtrain-worker)
  if(TARGET ${bin})
    list(APPEND _qtrain_binaries $<TARGET_FILE:${bin}>)
  endif()
endforeach()
_qtrain_deploy_test(docker_files
  ${_qtrain_deploy}/check_dockerfiles.py --binaries ${_qtrain_binaries})
_qtrain_deploy_test(docker_checks_fail_on_broken_files
  ${_qtrain_deploy}/check_dockerfiles_test.py ${_qtrain_binaries})

# The example job specs of the ConfigMaps are valid (qtrain validate).
if(TARGET qtrain)
  foreach(spec base/jobs/example.yaml overlays/gpu/jobs/example.yaml)
    string(REPLACE "/" "_" _name ${spec})
    add_test(NAME k8s_job_spec_${_name}
             COMMAND $<TARGET_FILE:qtrain> validate ${_qtrain_k8s}/${spec})
    set_tests_properties(k8s_job_spec_${_name} PROPERTIES LABELS integration TIMEOUT 60)
  endforeach()
endif()

# The real daemons start with the command lines the cpu-dev overlay gives its pods (flags,
# token files, ports), the worker registers under its pod name, and both stop on SIGTERM.
if(TARGET qtrain AND TARGET qtrain-coordinator AND TARGET qtrain-worker)
  _qtrain_deploy_test(k8s_daemons_run_with_manifest_flags
    ${_qtrain_deploy}/check_manifest_daemons.py --coordinator $<TARGET_FILE:qtrain-coordinator>
    --worker $<TARGET_FILE:qtrain-worker> --cli $<TARGET_FILE:qtrain>
    ${_qtrain_k8s}/overlays/cpu-dev)
endif()
