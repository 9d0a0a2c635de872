
-type.googleapis.com/runtimeoptions.v1.Options/etc/microsandbox/shim.toml