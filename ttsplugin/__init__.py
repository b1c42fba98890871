"""ttsplugin: test-time scaling for vLLM and diffusers. The libraries are `vllm_ttsplugin`,
`diffusers_ttsplugin` and `ttsplugin_kernels`; this package holds the `ttsplugin` command line."""

__version__ = "0.1.0"
