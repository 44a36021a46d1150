// The Python module miga_fast._C. Importing it runs the static TORCH_LIBRARY
// registrations of every other translation unit; it exposes no Python functions of
// its own (the ops are reached through torch.ops.miga_fast).
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "miga_fast's compiled kernels, registered as torch.ops.miga_fast.*", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
