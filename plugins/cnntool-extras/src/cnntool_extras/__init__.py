"""Extra layer types for cnntool, registered through the `cnntool.layers` entry-point group:

- `leaky_relu`: y = x if x > 0 else negative_slope * x (PyTorch's LeakyReLU);
- `prelu`: a learned slope per channel (PyTorch's PReLU(num_parameters=C));
- `depthwise_conv2d`: one filter per input channel (PyTorch's Conv2d with groups=C, Keras's
  DepthwiseConv2D).

cnntool imports these modules only when a spec uses one of the types; nothing here runs at
`import cnntool`.
"""

__version__ = "0.1.0"
