# nix/module.nix evaluated as NixOS would, with the stand-ins of stubs.nix; `modules` are the
# host's configuration. Run with `nix-instantiate --eval --strict --json --readonly-mode`.
{
  lib ? import ../../nix/vendor/nixpkgs-lib/lib,
  modules,
}:

let
  stubs = import ./stubs.nix { inherit lib; };
  config =
    (lib.evalModules {
      modules = [
        stubs.nixos
        stubs.agenix
        ../../nix/module.nix
        {
          _module.args.pkgs = stubs.pkgs;
          services.infrabot.package = stubs.package;
        }
      ]
      ++ modules;
    }).config;
in
{
  # What NixOS would refuse to build with (nixos/modules/system/activation/top-level.nix).
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  package = "${stubs.package}";
  service = config.systemd.services.infrabot;
  unitText = stubs.unitText config.systemd.services.infrabot;
  users = config.users;
  firewall = config.networking.firewall.allowedTCPPorts;
  etc = config.environment.etc;
  configFile = {
    path = "${config.services.infrabot.configFile}";
    inherit (config.services.infrabot.configFile) text;
  };
}
