{#- The full release: promote stage, apply stage's states, verify stage with that job,
    preview prod (when prod has a preview_path), promote prod.

    Copy this file to orch/release.sls in your base file_roots and run:
        salt-run state.orchestrate orch.release
        salt-run state.orchestrate orch.release pillar='{"preview": false}'   # without the preview
    Every step requires the one before it: a failed highstate on a stage minion,
    or a state the preview shows failing on a prod minion (or a prod minion that
    does not answer), stops the release, and prod's branch and directory stay as
    they are. Minions are those of each environment's `target` in the envflow
    configuration. -#}
{%- set environments = salt['config.get']('envflow:environments', []) %}
{%- set targets = {} %}
{%- set previews = {} %}
{%- for env in environments %}
{%- do targets.update({env['name']: env.get('target')}) %}
{%- do previews.update({env['name']: env.get('preview_path') is not none}) %}
{%- endfor %}
{%- set preview = salt['pillar.get']('preview', previews.get('prod', False)) %}
{%- if not targets.get('stage') %}

stage_needs_a_target:
  test.fail_without_changes:
    - name: "envflow: give the stage environment a target (a compound target such as G@env:stage) to release through it"
{%- else %}

promote_stage:
  envflow.promoted:
    - name: stage

highstate_stage:
  salt.state:
    - tgt: {{ targets['stage'] | yaml_dquote }}
    - tgt_type: compound
    - highstate: True
    - queue: True
    - require:
      - envflow: promote_stage

verify_stage:
  salt.runner:
    - name: envflow.verify
    - env: stage
    - jid: last
    - require:
      - salt: highstate_stage

{%- if preview %}

preview_prod:
  salt.runner:
    - name: envflow.preview
    - env: prod
    - require:
      - salt: verify_stage
{%- endif %}

promote_prod:
  envflow.promoted:
    - name: prod
    - require:
      - salt: verify_stage
{%- if preview %}
      - salt: preview_prod
{%- endif %}
{%- endif %}
