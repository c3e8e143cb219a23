"""A sweep's analysis beside its trials.csv: the parameters' importances (Optuna's default importance
evaluator) and three PNG plots drawn with Pillow (a core dependency), which need no browser:
history.png (each finished trial's objective and the best so far), importances.png (a bar per
parameter) and parallel_coordinates.png (a line per complete trial across the parameters' axes
and the objective, the best in red). optuna-dashboard gives the interactive view."""
import math

WIDTH, HEIGHT, MARGIN = 800, 480, 60
INK, GRID, POINT, BEST = (40, 40, 40), (220, 220, 220), (70, 110, 200), (210, 50, 40)


def complete_trials(study):
    from optuna.trial import TrialState
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]


def importances(study, params):
    """({parameter: importance}, "") or ({}, why there are none)."""
    import optuna
    names = [param.name for param in params]
    trials = complete_trials(study)
    if len(trials) < 2:
        return {}, f"{len(trials)} complete trial{'s' * (len(trials) != 1)}; the evaluator needs at least 2"
    try:
        return dict(optuna.importance.get_param_importances(study, params=names)), ""
    except (RuntimeError, ValueError) as error:  # e.g. a parameter that never varied
        return {}, str(error).splitlines()[0]


def canvas(title):
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 20), title, fill=INK)
    return image, draw


def scale(value, low, high, start, end):
    """`value` in [low, high] mapped to [start, end] (the middle when the range is empty)."""
    return (start + end) / 2 if high == low else start + (value - low) / (high - low) * (end - start)


def history_plot(study, path):
    trials = complete_trials(study)
    image, draw = canvas(f"optimization history ({study.direction.name.lower()}): objective per trial, best so far")
    if trials:
        values = [t.value for t in trials]
        low, high, last = min(values), max(values), max(t.number for t in trials)
        y = lambda v: scale(v, low, high, HEIGHT - MARGIN, MARGIN + 20)  # noqa: E731
        x = lambda n: scale(n, 0, max(last, 1), MARGIN, WIDTH - MARGIN)  # noqa: E731
        pick = max if study.direction.name == "MAXIMIZE" else min
        best, line = None, []
        for t in trials:
            best = t.value if best is None else pick(best, t.value)
            line.append((x(t.number), y(best)))
            draw.ellipse([x(t.number) - 4, y(t.value) - 4, x(t.number) + 4, y(t.value) + 4], fill=POINT)
        if len(line) > 1:
            draw.line(line, fill=BEST, width=2)
        axes(draw, f"{low:.4g}", f"{high:.4g}", "trial 0", f"trial {last}")
    save(image, path)


def axes(draw, low, high, left, right):
    draw.line([(MARGIN, MARGIN + 20), (MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN, HEIGHT - MARGIN)], fill=INK)
    draw.text((5, HEIGHT - MARGIN - 5), low, fill=INK)
    draw.text((5, MARGIN + 15), high, fill=INK)
    draw.text((MARGIN, HEIGHT - MARGIN + 8), left, fill=INK)
    draw.text((WIDTH - MARGIN - 40, HEIGHT - MARGIN + 8), right, fill=INK)


def importance_plot(found, path):
    image, draw = canvas("importance of each parameter" + ("" if found else ": too few complete trials"))
    row = (HEIGHT - 2 * MARGIN) / max(1, len(found))
    for index, (name, value) in enumerate(found.items()):
        top = MARGIN + 20 + index * row
        draw.rectangle([MARGIN + 120, top, MARGIN + 120 + value * (WIDTH - 2 * MARGIN - 180), top + row * 0.6],
                       fill=POINT)
        draw.text((MARGIN, top), name, fill=INK)
        draw.text((WIDTH - MARGIN - 50, top), f"{value:.3f}", fill=INK)
    save(image, path)


def axis_position(trials, name, value):
    """Where `value` of parameter `name` sits on its axis, in [0, 1]: numbers by value (log scale
    when all are positive and spread over a decade), other values by their order."""
    values = [t.params[name] for t in trials]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        low, high = min(values), max(values)
        if low > 0 and high / low >= 10:
            return scale(math.log(value), math.log(low), math.log(high), 0, 1)
        return scale(value, low, high, 0, 1)
    order = sorted(set(map(str, values)))
    return scale(order.index(str(value)), 0, max(1, len(order) - 1), 0, 1)


def parallel_plot(study, params, path):
    trials = [t for t in complete_trials(study) if all(p.name in t.params for p in params)]
    image, draw = canvas("parallel coordinates: the complete trials' values and objective (best in red)")
    names = [param.name for param in params] + ["objective"]
    xs = [scale(i, 0, len(names) - 1, MARGIN, WIDTH - MARGIN) for i in range(len(names))]
    for x, name in zip(xs, names):
        draw.line([(x, MARGIN + 20), (x, HEIGHT - MARGIN)], fill=GRID, width=2)
        draw.text((x - 20, HEIGHT - MARGIN + 8), name, fill=INK)
    if trials:
        values = [t.value for t in trials]
        best = (max if study.direction.name == "MAXIMIZE" else min)(trials, key=lambda t: t.value)
        for t in sorted(trials, key=lambda t: t is best):  # the best drawn last, on top
            ys = [axis_position(trials, name, t.params[name]) for name in names[:-1]]
            ys.append(scale(t.value, min(values), max(values), 0, 1))
            points = [(x, scale(y, 0, 1, HEIGHT - MARGIN, MARGIN + 20)) for x, y in zip(xs, ys)]
            draw.line(points, fill=BEST if t is best else POINT, width=3 if t is best else 1)
    save(image, path)


def save(image, path):
    from utils.atomic import atomic_open
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def write_plots(study, params, found, folder):
    """The three plots in `folder`; returns their paths."""
    paths = [folder / "history.png", folder / "importances.png", folder / "parallel_coordinates.png"]
    history_plot(study, paths[0])
    importance_plot(found, paths[1])
    parallel_plot(study, params, paths[2])
    return paths
