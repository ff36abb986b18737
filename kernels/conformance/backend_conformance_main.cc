// The conformance suite (conformance.h) over the fp32 CPU backend:
//   backend_conformance [--quick] [--filter=<op>] [--seed=<n>] [--failures-only]
// Exits 0 iff every case passes. Other backends get a main of their own that calls
// RunConformanceMain with their Backend.
#include "kernels/conformance/conformance.h"
#include "kernels/ops.h"

int main(int argc, char** argv) {
  return qtrain::kernels::RunConformanceMain(qtrain::kernels::CpuBackend(), argc, argv);
}
