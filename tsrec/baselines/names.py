"""The baselines' names, in a module that imports nothing: ``tsrec <stage> --help`` lists them as choices
without loading torch (tsrec/cli.py ``help_arguments``)."""

# stage baseline (tsrec.baselines.protocol)
MODELS = ("pop", "transition", "sasrec", "gru4rec", "caser", "hstu", "tiger")
DETERMINISTIC = ("pop", "transition")
LEARNED = tuple(m for m in MODELS if m not in DETERMINISTIC)
KNOBS = ("lr", "dropout", "width")  # the tuned knobs, in grid order (lr outermost)

# stages llm-sft, llm-baseline (tsrec.baselines.llm_titles)
LLM_MODELS = ("bigrec", "d3", "sdpo")
SFT_RUN = "title_sft"  # the shared title-SFT run: <train.out>/<DS>/runs/title_sft/seed<N>
SDPO_RUN = "sdpo"      # S-DPO's own run, from the SFT one


def check_models(models, known) -> None:
    """ValueError naming the models not in ``known`` (a config's ``validate``)."""
    bad = sorted(set(models) - set(known))
    if bad:
        raise ValueError(f"unknown model(s) {bad}; known: {list(known)}")
