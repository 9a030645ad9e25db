# cmake -P script behind the consumer_* tests. Arguments (-D):
#   MODE                 package | subdirectory
#   GEOPREF_SOURCE_DIR   geopref's source tree
#   GEOPREF_BINARY_DIR   geopref's build tree (installed from, MODE=package)
#   CONSUMER_SOURCE_DIR  tests/consumer/project
#   WORK_DIR             scratch directory, wiped first
#   CMAKE_GENERATOR, CMAKE_CXX_COMPILER, CMAKE_C_COMPILER, CUDAToolkit_ROOT (optional)
cmake_minimum_required(VERSION 3.24)

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer (${MODE}): ${what} failed (${rc}):\n${out}")
  endif()
  message(STATUS "consumer (${MODE}): ${what} ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
  -G "${CMAKE_GENERATOR}"
  -DCMAKE_BUILD_TYPE=Release
  -DGEOPREF_CONSUMER_MODE=${MODE})
# The compilers and the CUDA toolkit of geopref's build, each when given.
foreach(var IN ITEMS CMAKE_CXX_COMPILER CMAKE_C_COMPILER CUDAToolkit_ROOT)
  if(${var})
    list(APPEND configure_args -D${var}=${${var}})
  endif()
endforeach()

if(MODE STREQUAL "package")
  set(prefix "${WORK_DIR}/prefix")
  run_step("install into ${prefix}"
    ${CMAKE_COMMAND} --install "${GEOPREF_BINARY_DIR}" --prefix "${prefix}")
  if(NOT EXISTS "${prefix}/include/geopref/losses.hpp")
    message(FATAL_ERROR "consumer (package): headers missing from ${prefix}")
  endif()
  list(APPEND configure_args -DCMAKE_PREFIX_PATH=${prefix})
elseif(MODE STREQUAL "subdirectory")
  list(APPEND configure_args -DGEOPREF_SOURCE_DIR=${GEOPREF_SOURCE_DIR})
else()
  message(FATAL_ERROR "MODE must be package or subdirectory, not '${MODE}'")
endif()

run_step("configure" ${CMAKE_COMMAND} ${configure_args})
message(STATUS "${step_output}")
run_step("build" ${CMAKE_COMMAND} --build "${WORK_DIR}/build" -j 2)
run_step("run consumer" "${WORK_DIR}/build/consumer")
message(STATUS "${step_output}")
foreach(c_program consumer_c consumer_c_static)
  if(EXISTS "${WORK_DIR}/build/${c_program}")
    # The C programs link the installed kernels library; without a GPU they
    # exit 77, which counts as success for this packaging test.
    execute_process(COMMAND "${WORK_DIR}/build/${c_program}" RESULT_VARIABLE rc
                    OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if(NOT (rc EQUAL 0 OR rc EQUAL 77))
      message(FATAL_ERROR "consumer (${MODE}): ${c_program} failed (${rc}):\n${out}")
    endif()
    message(STATUS "consumer (${MODE}): ${c_program} exit ${rc}: ${out}")
  endif()
endforeach()
