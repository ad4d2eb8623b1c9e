"""YAML configs shipped with muse_tf (``config.packaged_config_path``); a package, so installs carry
them as its package data (setup.cfg ``[options.package_data]``)."""
