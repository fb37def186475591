"""Helpers for training frameworks that drive the optimizer themselves (docs/frameworks.md).

- :mod:`mokd_optim.integrations.lightning` -- PyTorch Lightning (``balanced_step``).
- :mod:`mokd_optim.integrations.accelerate` -- Hugging Face Accelerate (``balanced_backward``).

Neither this package nor the core library imports the frameworks: each helper module is
imported only by the user, and reads the framework's objects it is given (install them with
``pip install 'mokd-optim[frameworks]'``).
"""

__all__: list[str] = []
