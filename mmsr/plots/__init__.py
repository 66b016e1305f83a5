"""Figures of trained runs (`mmsr plot`): each writes a PNG and, next to it, the CSV it was drawn from.

    from mmsr.plots.items import plot_items     # Fig. 4: t-SNE of items, by popularity, cold marked
    from mmsr.plots.users import plot_users     # Fig. 5: t-SNE of users and their history items
    from mmsr.plots.curves import plot_curves, curves_figure   # loss / validation metrics per epoch

Nothing is imported here: `mmsr.plots.curves` must stay importable without torch (the study
runner draws Fig. 3 with it), while `items` and `users` rebuild models.
"""
