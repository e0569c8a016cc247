"""The "meta beats random" measurement the task tests share: a learner meta-trained briefly vs a
random init fitted with Adam at the best of a few lrs, both scored after a few test steps."""
from metainr import TrainConfig, build_learner, fit, mean_psnr, meta_train

RANDOM_LRS = (1e-4, 1e-3, 1e-2)


def meta_and_random_psnr(task, train, batch, make_field, learner="metasgd", outer_steps=100, outer_lr=1e-3,
                         test_steps=2, **options):
    """(meta, random) mean PSNRs after ``test_steps``: ``make_field(seed)`` builds a field; the learner
    is meta-trained from seed 0 on ``train``, the random init is seed 1."""
    field = make_field(1)
    random = max(mean_psnr(fit(task, field, dict(field.named_parameters()), batch, test_steps, lr=lr).psnr[:, -1])
                 for lr in RANDOM_LRS)
    meta_learner = build_learner(make_field(0), learner, **options)
    meta_train(meta_learner, task, train, TrainConfig(steps=outer_steps, batch_size=4, outer_lr=outer_lr),
               progress=False)
    result = fit(task, meta_learner.field, meta_learner.signal_init(task, batch), batch, test_steps,
                 **meta_learner.test_rule().fit_options(task, meta_learner.field))
    return mean_psnr(result.psnr[:, -1]), random
