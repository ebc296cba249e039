{#- Reactor SLS for salt/envflow/<env>/deployed: apply the environment's states and verify it.

    The event comes from the master (runner, orchestrate) with the data at the top level,
    or from a minion's salt-call, wrapped by Salt under data['data']. A branch environment's
    deploy (branch_environment: true) is tried by hand on a test minion: no highstate here. -#}
{%- set payload = data.get('data') if data.get('data') is mapping else data %}
{%- if payload.get('env') and not payload.get('branch_environment') %}
envflow_highstate_and_verify:
  runner.state.orchestrate:
    - args:
      - mods: orch.envflow-verify
      - saltenv: base
      - pillar:
          envflow_env: {{ payload['env'] | yaml_dquote }}
{%- endif %}
