// The wire codec's encoder (edgeprobe_runner/codec.py, "EPW1" frames); its decoder is parsers.h decode_frame.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parsers.h"

namespace edgeprobe {

// codec.encode(tensors, encoding): "EPW1", u32 header length, JSON header padded to the width it has
// with the widest scale/zero-point texts (so the frame size depends on shapes alone), payloads.
// `encoding`: fp32 (raw), fp16 (float32 tensors), int8 (floating tensors, affine per tensor).
std::vector<uint8_t> encode_frame(const std::vector<RawTensor>& ts, const std::string& encoding);

}  // namespace edgeprobe
