"""MuJoCo simulation for voltron: the MetaWorld task suite, fast offscreen rendering, demos and the sim corpus."""
