"""Only the compiled part of stoker; everything else is declared in pyproject.toml.

``stoker.agent.cache._fastio`` writes restored files without holding the GIL (agent/cache/_fastio.c). It is
optional: where no C compiler is available the build goes on without it and the agent uses its pure-Python
writer (slower, same results), and says so in its log when it starts.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stoker.agent.cache._fastio",
            ["agent/cache/_fastio.c"],
            libraries=["dl"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
            optional=True,
        )
    ]
)
