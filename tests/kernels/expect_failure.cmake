# ctest helper for the planted-bug self-tests: runs `PROGRAM CASE` and passes only when the run
# FAILS (non-zero exit) AND its output matches the regular expression EXPECT, i.e. the bug was
# caught by the tool that is meant to catch it, not by some other failure.
#   cmake -DPROGRAM=<exe> -DCASE=<case> -DEXPECT=<regex> -P expect_failure.cmake
execute_process(
  COMMAND "${PROGRAM}" "${CASE}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err
  TIMEOUT 300)
set(all "${out}${err}")
if("${rc}" STREQUAL "0")
  message(FATAL_ERROR "${CASE}: expected a failure reporting '${EXPECT}', but the run passed:\n${all}")
endif()
if(NOT all MATCHES "${EXPECT}")
  message(FATAL_ERROR "${CASE}: failed (${rc}) but without a report matching '${EXPECT}':\n${all}")
endif()
string(REGEX MATCH "[^\n]*${EXPECT}[^\n]*" line "${all}")
message(STATUS "${CASE}: failed as expected (exit: ${rc}): ${line}")
