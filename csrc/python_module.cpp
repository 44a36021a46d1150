// The Python module miga_fast._C. Importing it runs the static TORCH_LIBRARY
// registrations of every other translation unit; the ops are reached through
// torch.ops.miga_fast. Its one function of its own is a build diagnostic.
#include <Python.h>

#include <cstdint>

namespace miga_fast {
int64_t cpu_parallel_threads();  // cpu/parallel.cpp
}

extern "C" {
static PyObject* cpu_parallel_threads(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(miga_fast::cpu_parallel_threads()));
}

PyMODINIT_FUNC PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"cpu_parallel_threads", cpu_parallel_threads, METH_NOARGS,
       "How many threads the CPU kernels' at::parallel_for runs on now (1 in a build without OpenMP)."},
      {nullptr, nullptr, 0, nullptr},
  };
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "miga_fast's compiled kernels, registered as torch.ops.miga_fast.*", -1, methods,
  };
  return PyModule_Create(&module_def);
}
}
