// The library of our own OpenVINO operations (built by native.py): one translation unit, one
// extension entry point naming every operation this CPU can run.
#include "attention.cpp"
#include "matmul.cpp"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<janus::PagedAttention>>(),
                                                            std::make_shared<ov::OpExtension<janus::Int4MatMul>>()}));
#else
OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<janus::PagedAttention>>()}));
#endif
