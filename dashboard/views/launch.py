"""Launch page: configure a run (or a sweep of runs), see its exact budget, queue it."""
import dataclasses
import json

import streamlit as st

from dashboard import data
from dashboard.components.formatting import command_line, format_duration, format_lr, format_score, kind_label, plural
from dashboard.components.forms import (EMBEDDED_MODELS, FULL_RUN, OBJECTIVES, OPTION_CHOICES, RUN_LENGTH_KEYS, SHORT_RUN,
                                        LaunchError, StudyRequest, SweepRequest, check_launch, check_study, check_sweep,
                                        launch_config, parse_seeds,
                                        sweep_spec, task_names)
from heterolora_core.analysis.text import markdown_text
from heterolora_core.methods import registry
from heterolora_core.sweeps import FORM_AXES, expand, new_sweep_id, plan_sweep, proxy_sweep, queue_sweep, state_counts
from heterolora_core.tasks.instructions import MAX_SFT_UPLOAD_BYTES, save_sft_upload
from heterolora_core.training.data import DataError
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import LORA_TARGETS, Proxy, Ranking


PROXIES = [p.value for p in Proxy]
RANKINGS = [r.value for r in Ranking]
BUDGET_RATIO, BUDGET_MATCH, BUDGET_PARAMS = "enable ratio", "match uniform rank r", "adapter parameters"
LENGTH_SHORT, LENGTH_FULL, LENGTH_CUSTOM = "short run", "full run (the grid's)", "custom"
PRESETS = {LENGTH_SHORT: SHORT_RUN, LENGTH_FULL: FULL_RUN}
SWEEP_FORM, SWEEP_FILE = "this form + axes", "a sweep file"
FIELD_HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(RunConfig)}
SWEEP_EXAMPLE = "sweep: my-sweep\nbase: {task: mrpc, mode: dynamic, rank: 32, max_steps: 32}\naxes: {proxy: [grad_norm, snip], seed: [0, 1]}"


@st.cache_data(ttl=60, show_spinner="Computing the exact budget (the first time, this loads the engine)…")
def checked_plan(config_json: str) -> tuple[dict | None, str | None]:
    """(budget plan as a dict, None) for a valid config, (None, one-line error) otherwise."""
    try:
        plan = check_launch(json.loads(config_json))
    except LaunchError as exc:
        return None, str(exc)
    return dataclasses.asdict(plan), None


@st.cache_data(ttl=60, show_spinner="Checking every run of the sweep…")
def checked_sweep(request: SweepRequest) -> tuple[list[dict] | None, str | None]:
    """(each row's budget as dicts, None) when every run of the sweep passes the launch checks,
    (None, one-line error) otherwise."""
    try:
        _, _, budgets = check_sweep(request)
    except LaunchError as exc:
        return None, str(exc)
    return [dataclasses.asdict(b) for b in budgets], None


@st.cache_data(ttl=60, show_spinner="Planning the study's arms at their exact budgets…")
def checked_study(request: StudyRequest):
    """(the study's plan, None), or (None, one-line error)."""
    try:
        return check_study(request), None
    except LaunchError as exc:
        return None, str(exc)


def option_input(name: str) -> object:
    """The widget of one of a method's own settings: a choice for a setting with named values, a
    whole number otherwise (every other method option is a rank)."""
    default = getattr(RunConfig(), name)
    label = name.replace("_", " ")
    if name in OPTION_CHOICES:
        choices = OPTION_CHOICES[name]
        return st.selectbox(label, choices, index=choices.index(default), key=name, help=FIELD_HELP[name])
    return int(st.number_input(label, min_value=0, value=int(default), step=1, key=name, help=FIELD_HELP[name]))


def run_time(config: dict, short: bool) -> None:
    """The estimated wall time here (the engine's estimate from the store's finished runs) and, for
    the short run, what its score is worth."""
    st.subheader("Run time here")
    size = data.run_size(json.dumps(config, sort_keys=True))
    if size is None:
        st.caption("No estimate: the model or the task's data cannot be read now.")
        return
    estimate = data.run_time_estimate(config, size)
    if estimate.seconds is None:
        st.metric("Estimated run time", "–", help=estimate.basis)
        st.caption(f"{estimate.seconds_per_step:.2f} s per step on {estimate.device}; the run's length is unknown "
                   "(the task's training rows cannot be read now).")
    else:
        st.metric("Estimated run time", f"≈ {format_duration(estimate.seconds)}",
                  help="startup + steps × seconds per step; " + estimate.basis)
        spread = (f" (range {format_duration(estimate.low)}–{format_duration(estimate.high)})"
                  if format_duration(estimate.low) != format_duration(estimate.high) else "")
        st.caption(f"{estimate.steps:,} steps × {estimate.seconds_per_step:.2f} s + {estimate.startup_seconds:.0f} s "
                   f"startup on {estimate.device}{spread}: {estimate.basis}.")
    if short and size.majority_rate is not None:
        split = (f"; {format_score(size.split_majority_rate, 1)}% over the whole dev split"
                 if size.split_majority_rate is not None and config.get("dev_limit") else "")
        st.info(f"A short run shows **where the budget goes** (which modules the search turns on, how often it "
                f"reallocates), not a score that means anything: {config['max_steps']} steps on "
                f"{size.train_rows:,} examples end at about the majority-class rate of the {size.dev_rows:,} dev rows it "
                f"evaluates ({format_score(size.majority_rate, 1)}%{split}). For a score, use the full run over several "
                "seeds and read it on the Results page.", icon=":material/info:")


def sft_means_lm() -> None:
    """Choosing the sft task sets the objective to lm, its only objective (the radio keeps its own
    state, so its ``index`` alone would not follow the task)."""
    if st.session_state.get("task") == "sft":
        st.session_state["objective"] = "lm"


def sft_file_input(column, label: str, field: str) -> str | None:
    """An SFT file as a path, or uploaded (checked row by row, then kept under the data home's
    ``uploads/``): the path the run's config names. A bad upload is one line here, nothing saved."""
    uploaded = column.file_uploader(f"{label} (.jsonl upload, at most {MAX_SFT_UPLOAD_BYTES // 2**20} MiB)",
                                    type=["jsonl", "json"], key=f"{field}_upload")
    if uploaded is not None:
        saved = st.session_state.get(f"{field}_saved")
        try:
            if saved is None or saved[0] != uploaded.file_id:  # check and save an upload once, not on every rerun
                saved = (uploaded.file_id, *save_sft_upload(uploaded.name, uploaded.getvalue(), data.store().home))
                st.session_state[f"{field}_saved"] = saved
        except DataError as exc:
            column.error(markdown_text(str(exc)), icon=":material/error:")
            return None
        _, path, rows = saved
        column.caption(f"{markdown_text(uploaded.name)}: {plural(rows, 'row')}, kept as `{path.name}`")
        return str(path)
    return column.text_input(f"…or the {label.lower()}'s path", key=field, help=FIELD_HELP[field]).strip() or None


st.title("Launch")
st.caption("Configure a training run. The budget below updates as you change the inputs; runs go to the "
           "queue and train in the background worker.")

settings, preview = st.columns([3, 2], gap="large")
with settings:
    model = st.text_input("Model", value=SHORT_RUN["model"], key="model",
                          help="; ".join(f"`{name}`: {what}" for name, what in EMBEDDED_MODELS.items()) +
                               "; or a Hugging Face id, or a local model folder (Llama, Qwen2, Mistral decoders too)")
    tasks = task_names()
    task = st.selectbox("Task", tasks, index=tasks.index(SHORT_RUN["task"]), key="task", on_change=sft_means_lm,
                        help="a GLUE task, or sft: instruction fine-tuning from your JSON-lines files (objective lm)")
    objective = st.radio("Objective", OBJECTIVES, index=OBJECTIVES.index("classify"), horizontal=True, key="objective",
                         disabled=task == "sft", help=FIELD_HELP["objective"])
    data_files = {}
    if task == "sft":
        files_left, files_right = st.columns(2)
        data_files = {"train_file": sft_file_input(files_left, "Training file", "train_file"),
                      "dev_file": sft_file_input(files_right, "Dev file", "dev_file")}
    modes = list(registry.names())
    mode = st.radio("Mode", modes, index=modes.index(SHORT_RUN["mode"]), format_func=lambda m: registry.info(m).label,
                    horizontal=True, key="mode", help="; ".join(f"{registry.info(m).label}: {registry.info(m).description}"
                                                           for m in modes))
    method = registry.info(mode)
    searching = method.searches
    left, right = st.columns(2)
    lora_targets = left.multiselect("LoRA targets", list(LORA_TARGETS), default=SHORT_RUN["lora_targets"],
                                    format_func=kind_label, key="lora_targets")
    shortcuts = right.toggle("Shortcut modules", value=SHORT_RUN["shortcuts"] and method.shortcuts, key="shortcuts",
                             disabled=not method.shortcuts,
                             help="res_attn, res_ffn, cross_attn, cross_ffn in every layer (cross_ffn from layer 1)")
    proxy = left.selectbox("Proxy", PROXIES, index=PROXIES.index(SHORT_RUN["proxy"]), disabled=not searching, key="proxy")
    ranking = right.radio("Ranking", RANKINGS, index=RANKINGS.index(SHORT_RUN["ranking"]), horizontal=True,
                          disabled=not searching, key="ranking",
                          help="combined: LoRA and shortcut candidates ranked together; separated: top share of each")
    rank = left.number_input("Rank r", min_value=0, value=SHORT_RUN["rank"], step=1, key="rank")
    seed = right.number_input("Seed", min_value=0, value=SHORT_RUN["seed"], step=1, key="seed")
    options = {name: option_input(name) for name in method.options if name != "budget_params"}
    budgets = [BUDGET_RATIO, BUDGET_MATCH] + ([BUDGET_PARAMS] if "budget_params" in method.options else [])
    budget = st.radio("Budget", budgets, horizontal=True, disabled=not searching, key="budget")
    enable_ratio, match_uniform_rank, budget_params = SHORT_RUN["enable_ratio"], None, None
    if searching and budget == BUDGET_RATIO:
        enable_ratio = st.number_input("Enable ratio (share of candidates on)", min_value=0.0, max_value=1.0,
                                       value=SHORT_RUN["enable_ratio"], step=0.05, key="enable_ratio")
    elif searching and budget == BUDGET_MATCH:
        match_uniform_rank = st.number_input("Match the parameters of uniform rank", min_value=0, value=8, step=1,
                                             key="match_uniform_rank",
                                             help="enable modules at rank r up to the parameters of uniform LoRA on the LoRA targets at this rank")
    elif searching:
        budget_params = st.number_input("Adapter parameters", min_value=0, value=73_728, step=768, key="budget_params",
                                        help=FIELD_HELP["budget_params"])
    length = st.radio("Run length", [LENGTH_SHORT, LENGTH_FULL, LENGTH_CUSTOM], horizontal=True, key="length",
                      help=f"short: {SHORT_RUN['max_steps']} steps on {SHORT_RUN['train_limit']} training examples "
                           f"(evaluating on {SHORT_RUN['dev_limit']}), still reallocating several times: where the budget "
                           f"goes, in minutes. Full: the quality grid's settings ({FULL_RUN['epochs']:g} epochs of the whole "
                           f"training set, every dev row, batch {FULL_RUN['batch_size']}, lr {format_lr(FULL_RUN['lr'])}): "
                           "a score worth reading")
    run_length = {k: PRESETS.get(length, SHORT_RUN)[k] for k in RUN_LENGTH_KEYS}
    if length == LENGTH_CUSTOM:
        c1, c2, c3 = st.columns(3)
        run_length["max_steps"] = c1.number_input("Max steps (0: by epochs)", min_value=0, value=SHORT_RUN["max_steps"], key="max_steps") or None
        run_length["epochs"] = c2.number_input("Epochs", min_value=0.1, value=float(SHORT_RUN["epochs"]), step=0.5, key="epochs")
        run_length["realloc_every"] = c3.number_input("Reallocate every (epochs)", min_value=0.01, max_value=1.0,
                                                      value=float(SHORT_RUN["realloc_every"]), step=0.05, key="realloc_every")
        run_length["train_limit"] = c1.number_input("Training examples (0: all)", min_value=0, value=SHORT_RUN["train_limit"], key="train_limit") or None
        run_length["dev_limit"] = c2.number_input("Dev examples (0: all)", min_value=0, value=SHORT_RUN["dev_limit"], key="dev_limit") or None
        run_length["batch_size"] = c3.number_input("Batch size", min_value=1, value=SHORT_RUN["batch_size"], key="batch_size")
        run_length["lr"] = c1.number_input("Learning rate", min_value=0.0, value=float(SHORT_RUN["lr"]), step=1e-4,
                                           format="%.1e", key="lr")

fields = dict(model=model.strip(), task=task, objective=objective, **data_files, mode=mode, proxy=proxy, ranking=ranking,
              lora_targets=lora_targets,
              shortcuts=shortcuts and method.shortcuts, rank=int(rank), seed=int(seed), enable_ratio=float(enable_ratio),
              match_uniform_rank=int(match_uniform_rank) if match_uniform_rank is not None else None,
              budget_params=int(budget_params) if budget_params is not None else None, **options, **run_length)
config = launch_config(fields)
plan, error = checked_plan(json.dumps(config, sort_keys=True))

with preview:
    st.subheader("Budget")
    if error:
        st.error(error, icon=":material/error:")
    else:
        st.metric("Trainable adapter parameters", f"{plan['trainable_params']:,}")
        st.markdown(f"Matches **{plan['uniform_equivalent']}**")
        head = (f"classification head: {plan['head_params']:,} parameters, trained in every configuration"
                if config["objective"] == "classify" else "no task head: the causal LM's own loss on the answer tokens")
        st.caption(f"{plan['n_enabled']} of {plan['n_candidates']} candidate modules enabled "
                   f"({plan['n_lora']} LoRA + {plan['n_shortcut']} shortcut candidates) · {head}")
        for note in plan["notes"]:
            st.caption(note)
        run_time(config, length == LENGTH_SHORT)
    if st.button("Launch run", type="primary", disabled=bool(error), icon=":material/play_arrow:", key="launch"):
        record = data.store().enqueue(config)
        data.start_worker()
        st.success(f"Queued `{record.run_id}`.")
        st.page_link("views/runs.py", label="Follow it on the Runs page", icon=":material/list_alt:")

    st.subheader("Proxy sweep")
    st.caption("One run per proxy, everything else equal; optionally several seeds. Compare opens on the newest sweep.")
    sweep_proxies = st.multiselect("Proxies", PROXIES, default=["grad_norm", "snip"], key="sweep_proxies", disabled=not searching)
    seeds_text = st.text_input("Seeds", value=str(int(seed)), key="sweep_seeds", help="comma-separated, e.g. 0, 13, 42")
    sweep_error = None
    try:
        sweep_seeds = parse_seeds(seeds_text)
    except LaunchError as exc:
        sweep_error, sweep_seeds = str(exc), []
    if not searching:
        sweep_error = f"a proxy sweep needs a searching method ({method.label} uses no proxy)"
    elif not sweep_proxies:
        sweep_error = "choose at least one proxy"
    if sweep_error and not error:
        st.error(markdown_text(sweep_error), icon=":material/error:")
    n_sweep = len(sweep_proxies) * len(sweep_seeds)
    if st.button(f"Launch proxy sweep ({plural(n_sweep, 'run')})", disabled=bool(error or sweep_error), icon=":material/stacks:", key="launch_sweep"):
        try:
            sweep = proxy_sweep(config, sweep_proxies, sweep_seeds)
            records = queue_sweep(data.store(), sweep)
        except ValueError as exc:  # whatever the engine refuses: one line, nothing queued
            st.error(markdown_text(str(exc).strip().splitlines()[0]), icon=":material/error:")
        else:
            data.start_worker()
            st.success(f"Queued sweep `{sweep.sweep}`: {plural(len(records), 'run')}.")
            st.page_link("views/compare.py", label="Compare them", icon=":material/compare:")

st.divider()
st.subheader("Sweep")
st.caption("Many runs as one experiment: this form's settings as the base with one or more settings swept, or a "
           "sweep file (what `python -m heterolora_core sweep FILE` queues). Queueing it again under the same "
           "experiment id skips its finished runs and reruns its failed ones.")
source = st.radio("Define it by", [SWEEP_FORM, SWEEP_FILE], horizontal=True, key="sweep_source")
request = None
if source == SWEEP_FORM:
    axis_names = st.multiselect("Settings to sweep", list(FORM_AXES), default=["seed"], key="sweep_axes",
                                format_func=lambda name: FORM_AXES[name].label,
                                help="one run per combination of their values; the first one is the outermost")
    axis_columns = st.columns(3)
    axes = tuple((name, axis_columns[i % 3].text_input(
        f"{FORM_AXES[name].label} values", value=str(config.get(name) if config.get(name) is not None else ""),
        key=f"sweep_axis_{name}", help="comma-separated, e.g. 0, 1, 2")) for i, name in enumerate(axis_names))
    st.session_state.setdefault("sweep_id", new_sweep_id("launch"))
    sweep_id = st.text_input("Experiment id", key="sweep_id",
                             help="the runs' sweep id: queue the same sweep under the same id to resume it")
    request = SweepRequest(sweep_id=sweep_id, base=json.dumps(config, sort_keys=True), axes=axes)
else:
    uploaded = st.file_uploader("Upload a sweep file", type=["yaml", "yml", "json"], key="sweep_upload")
    pasted = st.text_area("…or paste one (YAML or JSON)", key="sweep_text", height=150, placeholder=SWEEP_EXAMPLE,
                          help="keys: sweep, base, axes, optionally folder, order, rows (see heterolora_core/sweeps.py)")
    if uploaded is not None:
        request = SweepRequest(file_name=uploaded.name, file_bytes=uploaded.getvalue())
    elif pasted.strip():
        request = SweepRequest(file_name="pasted.yaml", file_bytes=pasted.encode("utf-8"))
    else:
        st.caption("Upload or paste a sweep file to see its runs.")

budgets, sweep_error = checked_sweep(request) if request is not None else (None, None)
spec, planned, to_queue = None, [], 0
if budgets is not None:
    try:
        spec = sweep_spec(request)
        planned = plan_sweep(data.store(), expand(spec), spec.sweep)
    except ValueError as exc:  # e.g. a finished record with other settings in one of its folders
        sweep_error = str(exc).strip().splitlines()[0]
if sweep_error:
    st.error(markdown_text(sweep_error), icon=":material/error:")
elif planned:
    counts = state_counts(planned)
    to_queue = counts["todo"] + counts["rerun"]
    st.markdown(f"**{plural(len(planned), 'run')}** in experiment `{spec.sweep}`: {to_queue} to queue"
                + (f" ({counts['rerun']} failed or cancelled before, queued again)" if counts["rerun"] else "")
                + (f", {counts['done']} finished (skipped)" if counts["done"] else "")
                + (f", {counts['busy']} queued or running (left alone)" if counts["busy"] else ""))
    st.dataframe(budgets, hide_index=True, key="sweep_budgets", column_config={
        "row": "row", "label": "label", "runs": "runs",
        "trainable_params": st.column_config.NumberColumn("trainable params", format="localized"),
        "uniform_equivalent": "matches"})
    with st.expander("As a sweep file"):
        st.code(spec.to_yaml(), language="yaml")
        st.caption("Saved as `sweep.yaml`: `python -m heterolora_core sweep sweep.yaml --wait` queues and trains the same runs.")
if st.button(f"Queue sweep ({plural(to_queue, 'run')})", disabled=not to_queue, icon=":material/stacks:", key="launch_custom_sweep"):
    try:
        records = queue_sweep(data.store(), spec)
    except ValueError as exc:
        st.error(markdown_text(str(exc).strip().splitlines()[0]), icon=":material/error:")
    else:
        data.start_worker()
        st.success(f"Queued {plural(len(records), 'run')} under experiment `{spec.sweep}`.")
        st.page_link("views/compare.py", label="Compare them", icon=":material/compare:")

st.divider()
st.subheader("Does allocation pay here?")
st.caption("The allocation study for this form's model, task, targets, learning rate and run length: uniform LoRA at "
           "rank r (U, the reference) against the zero-cost rank allocation at exactly U's parameters (A) and its "
           "controls (R: A's ranks at random; T: shuffled across layers; I: inverted), and A and uniform LoRA at half "
           "the budget (H, UH), every arm on the same seeds and this form's learning rate. The Results page then gives "
           "the verdict, paired by seed. To choose each arm's rate on held-out training rows first (never on dev): "
           "`python -m heterolora_core study --choose-lr 2e-4,5e-4,1e-3 ...`.")
rank_col, seeds_col, max_col = st.columns(3)
study_rank = int(rank_col.number_input("Uniform rank r", min_value=2, max_value=256, value=4, step=2, key="study_rank",
                                       help="U's rank; an even number, so that uniform LoRA at half the budget exists"))
study_seeds = int(seeds_col.number_input("Seeds", min_value=1, max_value=20, value=5, step=1, key="study_seeds"))
study_max = int(max_col.number_input("Allocation's largest rank (0: 8 × r)", min_value=0, max_value=1024, value=0,
                                     step=1, key="study_max_rank"))
study_plan, study_error = (None, None) if error else checked_study(
    StudyRequest(json.dumps(config, sort_keys=True), study_rank, study_seeds, study_max))
if error:
    st.caption("Correct the settings above (see the error there) to plan a study.")
elif study_error:  # a warning: the run above may be fine when no study of this form's settings is
    st.warning(f"No study of these settings: {markdown_text(study_error)}", icon=":material/warning:")
else:
    n_study = len(expand(study_plan.spec))
    st.markdown(f"**{plural(n_study, 'run')}**: budget **{study_plan.budget:,}** adapter parameters (half: "
                f"{study_plan.half_budget:,}), allocation ranks up to {study_plan.max_rank}.")
if st.button(f"Queue the study ({plural(len(expand(study_plan.spec)), 'run')})" if study_plan else "Queue the study",
             disabled=study_plan is None, icon=":material/science:", key="launch_study"):
    records = queue_sweep(data.store(), study_plan.spec)
    data.start_worker()
    st.success(f"Queued study `{study_plan.spec.sweep}`: {plural(len(records), 'run')}. Its verdict is on the Results page.")
    st.page_link("views/results.py", label="Results", icon=":material/table_chart:")

with st.expander("Command line equivalent"):
    st.code(command_line(RunConfig.from_dict(config), "data/runs/<id>"), language="bash")
