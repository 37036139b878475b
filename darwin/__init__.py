"""DARWIN: an LLM evolves the training code of small GPT models.

Layers, lowest first (tests/test_layers.py checks that imports only go down, through each
package's face, its ``__all__``): ``errors``/``settings``/``seed``, ``memory`` (records and the
versioned store), ``sandbox``, ``evaluation`` (training and the trusted scorer), ``llm``,
``mutation``, ``engine`` (the run's decisions), ``reports``: all free of Prefect. Then the
orchestration, which may import Prefect: ``tasks``, ``flows`` (the flows and the one run
lifecycle, flows/launch.py) and ``cli`` (the `darwin` command).
"""

__version__ = "0.1.0"
