{#- Apply the states of one environment's minions, then verify the environment with that job.

    Run by the reactor (reactor/envflow-deployed.sls) with pillar {"envflow_env": <env>},
    or by hand:  salt-run state.orchestrate orch.envflow-verify pillar='{"envflow_env": "stage"}'
    Copy this file to orch/envflow-verify.sls in your base file_roots. -#}
{%- set name = salt['pillar.get']('envflow_env') %}
{%- set target = [] %}
{%- for env in salt['config.get']('envflow:environments', []) %}
{%-   if env['name'] == name and env.get('target') %}{% do target.append(env['target']) %}{% endif %}
{%- endfor %}
{%- if target %}

highstate_{{ name }}:
  salt.state:
    - tgt: {{ target[0] | yaml_dquote }}
    - tgt_type: compound
    - highstate: True
    - queue: True

verify_{{ name }}:
  salt.runner:
    - name: envflow.verify
    - env: {{ name }}
    - jid: last
    - require:
      - salt: highstate_{{ name }}
{%- else %}

nothing_to_verify:
  test.succeed_without_changes:
    - name: environment {{ name }} has no target in the envflow configuration
{%- endif %}
