"""vs-uav: Upscale-A-Video as a VapourSynth filter, a library and a command line."""

__version__ = "0.1.0"
