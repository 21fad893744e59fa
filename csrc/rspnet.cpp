// Operator schemas of rspnet, declared once. Kernels register themselves per
// backend in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); fake (meta)
// kernels and autograd live in Python (rspnet/ops/*.py), next to the Triton
// kernels that implement the same contracts.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// _C is imported as a Python module only so that loading it runs the static
// registrations below; it exposes no Python functions itself.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(rspnet, m) {
  // y = sum_k weights[k] * inputs[k]
  m.def("mixed_sum(Tensor weights, Tensor[] inputs) -> Tensor");
  // (dx_k = w_k * grad if input_grads, dw_k = <grad, x_k> if weight_grad), one pass
  m.def("mixed_sum_backward(Tensor grad, Tensor weights, Tensor[] inputs, bool input_grads, "
        "bool weight_grad) -> (Tensor[], Tensor)");
  // y = sum_p softmax(logits / temperature)_p * resample(inputs[p] -> size)
  m.def("path_fusion(Tensor logits, Tensor[] inputs, SymInt[2] size, float temperature) -> Tensor");
  // (d inputs, d logits) without materialising any resampled map
  m.def("path_fusion_backward(Tensor grad, Tensor logits, Tensor[] inputs, float temperature, "
        "bool input_grads, bool logit_grad) -> (Tensor[], Tensor)");
  // channel_shuffle(cat(inputs, 1), groups)
  m.def("channel_merge(Tensor[] inputs, int groups) -> Tensor");
  // inverse permutation of grad, split back into the inputs' channel counts
  m.def("channel_merge_backward(Tensor grad, SymInt[] channels, int groups) -> Tensor[]");
}
