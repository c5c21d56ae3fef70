# The data files LDAELib reads at run time, from the one list in LDAELibPackageData.txt (which
# pyproject.toml's package-data repeats), for a built extension to install beside the module.
#   In:  LDAELIB_SOURCE_DIR, the folder that holds LDAELib/.
#   Out: LDAELIB_PYTHON_RESOURCES, paths relative to LDAELIB_SOURCE_DIR.
# `cmake -DLDAELIB_SOURCE_DIR=<repo> -P LDAELibPackageData.cmake` prints the list (Testing/test_packaging.py).

file(STRINGS ${CMAKE_CURRENT_LIST_DIR}/LDAELibPackageData.txt _ldaelib_data_patterns REGEX "^[^#]")
set(LDAELIB_PYTHON_RESOURCES)
foreach(_pattern IN LISTS _ldaelib_data_patterns)
  string(STRIP "${_pattern}" _pattern)
  file(GLOB _files LIST_DIRECTORIES false RELATIVE ${LDAELIB_SOURCE_DIR} ${LDAELIB_SOURCE_DIR}/LDAELib/${_pattern})
  list(APPEND LDAELIB_PYTHON_RESOURCES ${_files})
endforeach()

if(CMAKE_SCRIPT_MODE_FILE)
  foreach(_file IN LISTS LDAELIB_PYTHON_RESOURCES)
    message("${_file}")
  endforeach()
endif()
