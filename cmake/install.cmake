# cmake/install.cmake — installs geopref as a CMake package.
#
#   find_package(geopref CONFIG REQUIRED)
#     geopref::geopref     the header-only library
#     geopref::reference   + Eigen, for the CPU reference (when Eigen 3 is found)
#     geopref::cuda        the compiled kernels with the C ABI, shared library
#     geopref::cuda_static the same, static (needs the CUDA toolkit's cudart_static)
#   find_package(geopref CONFIG REQUIRED COMPONENTS reference cuda cuda_static)
#     fails unless those targets can be provided.
#
# Included by the top-level CMakeLists.txt after GNUInstallDirs. Each optional
# target is in its own export set, so a consumer is asked only for the
# dependencies of what was installed and can be found: Eigen for the reference,
# the CUDA toolkit for the static kernels (the shared one carries its runtime).
# kernels/CMakeLists.txt installs geopref-cuda-targets and
# geopref-cuda-static-targets itself.

option(GEOPREF_INSTALL "Generate the install rules" ${GEOPREF_TOP_LEVEL})

if(GEOPREF_INSTALL)
  include(CMakePackageConfigHelpers)
  set(GEOPREF_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/geopref
      CACHE STRING "Where geopref-config.cmake is installed, relative to the prefix")

  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/geopref
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
          FILES_MATCHING PATTERN "*.hpp" PATTERN "*.cuh" PATTERN "*.inl" PATTERN "*.h")
  install(TARGETS geopref EXPORT geopref-targets)
  install(EXPORT geopref-targets
          NAMESPACE geopref::
          DESTINATION ${GEOPREF_INSTALL_CMAKEDIR})
  if(TARGET geopref_reference)
    set_target_properties(geopref_reference PROPERTIES EXPORT_NAME reference)
    install(TARGETS geopref_reference EXPORT geopref-reference-targets)
    install(EXPORT geopref-reference-targets
            NAMESPACE geopref::
            DESTINATION ${GEOPREF_INSTALL_CMAKEDIR})
  endif()

  configure_package_config_file(
    ${CMAKE_CURRENT_LIST_DIR}/geopref-config.cmake.in
    ${PROJECT_BINARY_DIR}/geopref-config.cmake
    INSTALL_DESTINATION ${GEOPREF_INSTALL_CMAKEDIR})
  # 0.x: a minor version may break the API, so only the same minor version
  # satisfies find_package(geopref 0.1). The header-only package does not
  # depend on the architecture; the compiled kernels do.
  if(GEOPREF_BUILD_KERNELS AND GEOPREF_HAS_CUDA)
    write_basic_package_version_file(${PROJECT_BINARY_DIR}/geopref-config-version.cmake
      VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
  else()
    write_basic_package_version_file(${PROJECT_BINARY_DIR}/geopref-config-version.cmake
      VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
  endif()
  install(FILES ${PROJECT_BINARY_DIR}/geopref-config.cmake
                ${PROJECT_BINARY_DIR}/geopref-config-version.cmake
          DESTINATION ${GEOPREF_INSTALL_CMAKEDIR})
endif()
