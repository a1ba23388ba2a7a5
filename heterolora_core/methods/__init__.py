"""Methods: how a run allocates its budget. One file per method, registered here by ``mode`` name.

To add a method, write ``methods/<name>.py`` with a :class:`~heterolora_core.methods.base.Method`
subclass and add one :func:`~heterolora_core.methods.registry.register` line below; the command
line, the trainer, inference, the planner, the store and the dashboard ask the registry.
"""
from heterolora_core.methods.registry import MethodInfo, register

register(MethodInfo(
    "lora", "uniform LoRA", "heterolora_core.methods.uniform:UniformLora",
    baseline=True, description="every candidate on at the same rank (plain LoRA, shortcuts optional)"))
register(MethodInfo(
    "static", "static HeteroLoRA", "heterolora_core.methods.heterolora:StaticHeteroLora", searches=True,
    description="score once before training, enable the top candidates for the whole run"))
register(MethodInfo(
    "dynamic", "dynamic HeteroLoRA", "heterolora_core.methods.heterolora:DynamicHeteroLora", searches=True,
    reallocates=True, description="re-score and re-select every --realloc-every of an epoch"))
register(MethodInfo(
    "adalora", "AdaLoRA (PEFT)", "heterolora_core.methods.adalora:AdaLora", shortcuts=False, reallocates=True,
    options=("adalora_init_r", "adalora_target_r"),
    description="PEFT's AdaLoRA: prunes SVD triplets from --adalora-init-r to --adalora-target-r"))
register(MethodInfo(
    "rank_static", "static rank allocation", "heterolora_core.methods.ranks:RankStatic", searches=True,
    options=("budget_params", "rank_min", "rank_rule", "rank_init"),
    description="a rank per candidate from the gradients' spectra before training, under an exact budget"))
register(MethodInfo(
    "rank_dynamic", "dynamic rank allocation", "heterolora_core.methods.ranks:RankDynamic", searches=True,
    reallocates=True, options=("budget_params", "rank_min", "rank_rule"),
    description="ranks moved between candidates every --realloc-every of an epoch, under an exact budget"))
register(MethodInfo(
    "rank_random", "random ranks (control)", "heterolora_core.methods.ranks:RankRandom", searches=True,
    control=True, options=("budget_params", "rank_min", "rank_rule"),
    description="rank_static's ranks dealt at random among candidates of equal cost: the control"))
register(MethodInfo(
    "rank_layers", "ranks shuffled across layers (control)", "heterolora_core.methods.ranks:RankLayers",
    searches=True, control=True, options=("budget_params", "rank_min", "rank_rule"),
    description="rank_static's ranks shuffled across layers within each module kind: which kinds, not which layers"))
register(MethodInfo(
    "rank_inverted", "inverted ranks (control)", "heterolora_core.methods.ranks:RankInverted", searches=True,
    control=True, options=("budget_params", "rank_min", "rank_rule"),
    description="rank_static's ranks in reverse order of score: does the score carry signal?"))
register(MethodInfo(
    "eva", "EVA (PEFT)", "heterolora_core.methods.eva:Eva", shortcuts=False,
    description="PEFT's EVA: LoRA at --rank, ranks redistributed by the explained variance of the inputs"))
