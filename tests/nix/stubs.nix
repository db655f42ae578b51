# Stand-ins for the parts of NixOS and nixpkgs that nix/module.nix uses, so the module can be
# evaluated with nixpkgs' lib alone (no package set, no store writes: run with
# `nix-instantiate --eval --strict --readonly-mode`, where builtins.toFile only computes the
# store path).
#
# Option declarations follow NixOS (nixpkgs nixos/modules/): misc/assertions.nix (assertions,
# warnings), config/users-groups.nix (users.users / users.groups), services/networking/firewall.nix
# (networking.firewall.allowedTCPPorts), system/etc/etc.nix (environment.etc.<name>.text/mode),
# system/boot/systemd.nix with lib/systemd-lib.nix (systemd.services.<name> with description,
# wantedBy, wants, after, environment, serviceConfig as an attrset of unit options). Only the
# sub-options the module sets are declared, with the same types.
{ lib }:

let
  inherit (lib) mkOption types;
  # lib/systemd-lib.nix `unitOption`: an atom or a list of atoms.
  atom = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
  ];
  unitOption = types.either atom (types.listOf atom);
in
{
  # pkgs.formats.yaml as in nixpkgs pkgs/pkgs-lib/formats.nix (commit 001740f0): the same value
  # type; `generate` renders builtins.toJSON of the value, which nixpkgs then converts with
  # remarshal's json2yaml. JSON is YAML, so the file is the value nixpkgs would write.
  pkgs = {
    formats.yaml =
      { }:
      {
        type =
          let
            valueType =
              types.nullOr (
                types.oneOf [
                  types.bool
                  types.int
                  types.float
                  types.str
                  types.path
                  (types.attrsOf valueType)
                  (types.listOf valueType)
                ]
              )
              // {
                description = "YAML 1.1 value";
              };
          in
          valueType;
        generate = name: value: {
          outPath = builtins.toFile name (builtins.toJSON value);
          text = builtins.toJSON value;
        };
      };
  };

  # The unit file NixOS writes for a systemd.services entry: [Unit] from description, wants
  # and after, [Service] from environment and serviceConfig, each value through
  # nixos/lib/systemd-lib.nix `toOption`/`attrsToSection` (nixpkgs commit 01363563; a list
  # gives one line per item, booleans "true"/"false"). wantedBy becomes a symlink, not a line.
  unitText =
    service:
    let
      toOption =
        x:
        if x == true then
          "true"
        else if x == false then
          "false"
        else
          toString x;
      attrsToSection =
        as:
        lib.concatStrings (
          lib.concatLists (
            lib.mapAttrsToList (
              name: value: map (x: "${name}=${toOption x}\n") (if lib.isList value then value else [ value ])
            ) as
          )
        );
    in
    "[Unit]\n"
    + attrsToSection (
      { Description = service.description; }
      // lib.optionalAttrs (service.wants != [ ]) { Wants = toString service.wants; }
      // lib.optionalAttrs (service.after != [ ]) { After = toString service.after; }
    )
    + "\n[Service]\n"
    + lib.concatStrings (
      lib.mapAttrsToList (n: v: "Environment=\"${n}=${v}\"\n") service.environment
    )
    + attrsToSection service.serviceConfig;

  # The flake's package, as a derivation-shaped attrset (types.package accepts it).
  package = {
    type = "derivation";
    name = "infrabot-0.1.0";
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-infrabot-0.1.0";
  };

  # agenix's `age.secrets` (ryantm/agenix modules/age.nix, commit 019784cb: secretType), for
  # the README's example host: a secret's `path` is /run/agenix/<name> unless set.
  agenix = {
    options.age.secrets = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule (
          { config, name, ... }:
          {
            options = {
              name = mkOption {
                type = types.str;
                default = name;
              };
              file = mkOption { type = types.path; };
              path = mkOption {
                type = types.str;
                default = "/run/agenix/${config.name}";
              };
              mode = mkOption {
                type = types.str;
                default = "0400";
              };
              owner = mkOption {
                type = types.str;
                default = "0";
              };
              group = mkOption {
                type = types.str;
                default = "0";
              };
            };
          }
        )
      );
    };
  };

  nixos = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      users.users = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule {
            options = {
              isSystemUser = mkOption {
                type = types.bool;
                default = false;
              };
              group = mkOption {
                type = types.str;
                default = "";
              };
              home = mkOption {
                type = types.path;
                default = "/var/empty";
              };
              description = mkOption {
                type = types.str;
                default = "";
              };
              extraGroups = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            };
          }
        );
      };
      users.groups = mkOption {
        default = { };
        type = types.attrsOf (types.submodule { });
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      environment.etc = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule {
            options = {
              text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              mode = mkOption {
                type = types.str;
                default = "symlink";
              };
            };
          }
        );
      };
      systemd.services = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule {
            options = {
              description = mkOption {
                type = types.str;
                default = "";
              };
              wantedBy = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              wants = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              after = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              environment = mkOption {
                type = types.attrsOf types.str;
                default = { };
              };
              serviceConfig = mkOption {
                type = types.attrsOf unitOption;
                default = { };
              };
            };
          }
        );
      };
    };
  };
}
