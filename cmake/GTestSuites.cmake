# CTest tests that each run a few GoogleTest *suites* (not one test, as gtest_discover_tests does). Every test
# process loads LibTorch, which costs ~1.5 s (~5 s under sanitizers) against a few ms for most tests: one
# process per test made the suite ~30x slower than running the binary once, and one per suite still spent
# most of a sanitizer run starting processes. A group stays small enough for `ctest -j` to spread the groups
# over the cores. A failing group's output names each failing test; run one suite with
# `<binary> --gtest_filter='Suite.*'`.
#
#   peft_add_gtest_suites(<target> [TIMEOUT seconds] [SUITES_PER_TEST n])
#     ->  tests named <target>.<FirstSuite> (one suite) or <target>.<FirstSuite>..<LastSuite> (a group)

set(PEFT_GTEST_SUITES_SCRIPT "${CMAKE_CURRENT_LIST_FILE}")

function(peft_add_gtest_suites target)
  cmake_parse_arguments(arg "" "TIMEOUT;SUITES_PER_TEST" "" ${ARGN})
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 600)
  endif()
  if(NOT arg_SUITES_PER_TEST)
    set(arg_SUITES_PER_TEST 8)
  endif()
  set(listed "${CMAKE_CURRENT_BINARY_DIR}/${target}_suites.cmake")
  set(include_file "${CMAKE_CURRENT_BINARY_DIR}/${target}_include.cmake")
  # The suite list is written after each link, when the binary can list its own tests.
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND "${CMAKE_COMMAND}" -D "EXE=$<TARGET_FILE:${target}>" -D "PREFIX=${target}" -D "OUT=${listed}"
            -D "TIMEOUT=${arg_TIMEOUT}" -D "GROUP=${arg_SUITES_PER_TEST}" -D "WORKDIR=${CMAKE_CURRENT_BINARY_DIR}" -P "${PEFT_GTEST_SUITES_SCRIPT}"
    BYPRODUCTS "${listed}" VERBATIM)
  file(WRITE "${include_file}"
    "if(EXISTS [=[${listed}]=])\n  include([=[${listed}]=])\nelse()\n"
    "  add_test([=[${target}_NOT_BUILT]=] [=[${target}_NOT_BUILT]=])\nendif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${include_file}")
endfunction()

# Script mode: list the binary's suites and write the add_test() calls.
if(CMAKE_SCRIPT_MODE_FILE AND DEFINED EXE)
  execute_process(COMMAND "${EXE}" --gtest_list_tests OUTPUT_VARIABLE listing RESULT_VARIABLE rc TIMEOUT 120)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${EXE} --gtest_list_tests failed (${rc}): ${listing}")
  endif()
  string(REPLACE "\n" ";" lines "${listing}")
  set(suites "")
  foreach(line IN LISTS lines)
    # Suite lines start in column 0 ("Suite." or "Prefix/Suite.  # TypeParam = ..."); tests are indented.
    if(line MATCHES "^([^ ]+)\\.")
      list(APPEND suites "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  set(content "")
  list(LENGTH suites count)
  set(first 0)
  while(first LESS count)
    math(EXPR last "${first} + ${GROUP} - 1")
    if(last GREATER_EQUAL count)
      math(EXPR last "${count} - 1")
    endif()
    set(filter "")
    foreach(i RANGE ${first} ${last})
      list(GET suites ${i} suite)
      string(APPEND filter "${suite}.*:")
    endforeach()
    string(REGEX REPLACE ":$" "" filter "${filter}")
    list(GET suites ${first} first_suite)
    list(GET suites ${last} last_suite)
    set(name "${PREFIX}.${first_suite}")
    if(NOT last EQUAL first)
      set(name "${name}..${last_suite}")
    endif()
    string(APPEND content
      "add_test([=[${name}]=] [=[${EXE}]=] [=[--gtest_filter=${filter}]=])\n"
      "set_tests_properties([=[${name}]=] PROPERTIES TIMEOUT ${TIMEOUT} WORKING_DIRECTORY [=[${WORKDIR}]=])\n")
    math(EXPR first "${last} + 1")
  endwhile()
  file(WRITE "${OUT}" "${content}")
endif()
