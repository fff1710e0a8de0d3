"""Tools that measure and tune the runtime (`specqd bench`, `tune`, `profile`) and the peer it is compared with
(openvino-genai); the runtime's core in the package above does not import them."""
