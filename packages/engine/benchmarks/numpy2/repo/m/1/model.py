"""A string-in, string-out Python-backend model that logs what Triton 2.51's stub hands to
pb_utils.deserialize_bytes_tensor (run by run.sh under numpy 2 and under numpy 1.26)."""

import numpy as np
import triton_python_backend_utils as pb_utils

_deserialize = pb_utils.deserialize_bytes_tensor


def _logged(encoded):
    pb_utils.Logger.log_info(
        f"numpy {np.__version__}: the stub hands over {type(encoded).__name__} dtype={encoded.dtype} "
        f"shape={encoded.shape} strides={encoded.strides} bytes={bytes(encoded)[:12]!r}")
    return _deserialize(encoded)


# The stub looks the function up when it calls it, so this wrapper sees every BYTES input.
pb_utils.deserialize_bytes_tensor = _logged


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(-1)[0]
            out = np.array([b"echo: " + bytes(text)], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUT", out)]))
        return responses
