"""Small images as images: scikit-learn's 8x8 digits as 1x8x8, a small CNN, softmax cross-entropy.

conv 3x3 (32 channels, padding 1) -> relu -> max-pool 2 -> conv 3x3 (32 channels, padding 1) -> relu
-> flatten (32*4*4 = 512) -> dense 512-10, built from ``gradc.layers`` (PyTorch's layouts: K1 is
a Conv2d weight (32, 1, 3, 3), W a Linear weight (10, 512)). Weights are drawn as PyTorch draws the
same layers' (U(+-1/sqrt(fan_in))), biases start at zero. A second max-pool (to 2x2) lost
about half a point of test accuracy, so the second block keeps the 4x4 map.
"""
import gradc as gc
from gradc.layers import conv2d, flatten, max_pool2d

C1, C2 = 32, 32

m = gc.Model("digits_cnn")
x, label = m.input("x", (1, 8, 8)), m.target("label", dtype="int32")
K1, c1 = m.param("K1", (C1, 1, 3, 3)), m.param("c1", C1)
K2, c2 = m.param("K2", (C2, C1, 3, 3)), m.param("c2", C2)
W, b = m.param("W", (10, C2 * 4 * 4)), m.param("b", 10)

h1 = max_pool2d(gc.relu(conv2d(x, K1, c1, padding=1)), 2)      # (32, 4, 4)
h2 = gc.relu(conv2d(h1, K2, c2, padding=1))                     # (32, 4, 4)
logits = m.output("logits", W @ flatten(h2) + b)
m.loss(gc.softmax_cross_entropy(logits, label))
