"""The baselines wing (above ``model``, below ``commands``).

ID and generative baselines (stage baseline, ``tsrec/commands/baseline.py``): the models, one class per model
(``general``, ``sequential``, ``generative``), their shared trainer (``trainer``), the section (``config``), the
protocol of one (dataset, model) run (``protocol``) and its fit cache (``fits``). LLM baselines (stages llm-sft,
llm-baseline, ``tsrec/commands/llm_baseline.py``): ``llm_config``, ``llm_titles`` (overview, title SFT),
``sdpo``, ``llm_decoding``, ``llm_scoring``. ``names``: the model names, importing nothing (for ``--help``);
``table``: results/baselines.md.
"""
