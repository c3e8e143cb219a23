"""Networks by name. Each entry builds a model from the parsed options; the CLI's choices come from here.

Adding a model is one line: its name and a function of the options (and the task's lists of
`model_types` decide which tasks offer it).
"""


def _vanilla(args):
    from model.vanilla_model import VanillaMLP
    return VanillaMLP(dropout=args.dropout)


def _unet(args):
    from model.unet import UNet
    return UNet(args.n_channels, args.n_classes, depth=args.depth, base_width=args.base_width)


def _unetpp(args):
    from model.unetpp import UNetPlusPlus
    return UNetPlusPlus(args.n_channels, args.n_classes, depth=args.depth, base_width=args.base_width,
                        deep_supervision=args.deep_supervision)


MODELS = {
    "Vanilla": _vanilla,
    "UNet": _unet,
    "UNet++": _unetpp,
}


def build_model(args):
    return MODELS[args.model_type](args)
