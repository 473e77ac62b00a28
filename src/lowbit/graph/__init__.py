"""The graph protocol both front ends adapt to (``view``), and the rules written once over it:
quantizer placement (``placement``) and cross-layer-equalization chains (``chains``)."""
