# One CTest test per GoogleTest *suite* (not per test, as gtest_discover_tests does). Every test process
# loads LibTorch, which costs ~0.5 s (several under sanitizers) against a few ms for most tests, so
# per-test processes made the suite ~30x slower than running the binary once. A failing suite's output
# still names each failing test; run one test with `<binary> --gtest_filter=Suite.Name`.
#
#   peft_add_gtest_suites(<target> [TIMEOUT seconds])   ->  tests named <target>.<Suite>

set(PEFT_GTEST_SUITES_SCRIPT "${CMAKE_CURRENT_LIST_FILE}")

function(peft_add_gtest_suites target)
  cmake_parse_arguments(arg "" "TIMEOUT" "" ${ARGN})
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 600)
  endif()
  set(listed "${CMAKE_CURRENT_BINARY_DIR}/${target}_suites.cmake")
  set(include_file "${CMAKE_CURRENT_BINARY_DIR}/${target}_include.cmake")
  # The suite list is written after each link, when the binary can list its own tests.
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND "${CMAKE_COMMAND}" -D "EXE=$<TARGET_FILE:${target}>" -D "PREFIX=${target}" -D "OUT=${listed}"
            -D "TIMEOUT=${arg_TIMEOUT}" -D "WORKDIR=${CMAKE_CURRENT_BINARY_DIR}" -P "${PEFT_GTEST_SUITES_SCRIPT}"
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
  set(content "")
  foreach(line IN LISTS lines)
    # Suite lines start in column 0 ("Suite." or "Prefix/Suite.  # TypeParam = ..."); tests are indented.
    if(line MATCHES "^([^ ]+)\\.")
      set(name "${PREFIX}.${CMAKE_MATCH_1}")
      string(APPEND content
        "add_test([=[${name}]=] [=[${EXE}]=] [=[--gtest_filter=${CMAKE_MATCH_1}.*]=])\n"
        "set_tests_properties([=[${name}]=] PROPERTIES TIMEOUT ${TIMEOUT} WORKING_DIRECTORY [=[${WORKDIR}]=])\n")
    endif()
  endforeach()
  file(WRITE "${OUT}" "${content}")
endif()
