{#- Reactor SLS for salt/envflow/<env>/<action>: post one line about it to a chat's incoming webhook.

    Slack and Mattermost take the post as it is (a "text"). The webhook's URL is read on the master
    from its config (slack:hook; an sdb:// URI works too) by Salt's slack.call_hook, so it appears
    neither in this reaction's arguments nor in the master's events or job cache.
    Wired by reactor-notify.conf; the events and their data: docs/workflows/events.rst. -#}
{%- set payload = data.get('data') if data.get('data') is mapping else data %}
{%- set env, action = tag.split('/')[2], tag.split('/')[3] %}
{%- macro short(commit) %}{{ (commit or '-')[:10] }}{% endmacro %}
{%- set moved = short(payload.get('old')) ~ ' -> ' ~ short(payload.get('new')) %}
{%- if action == 'rolled_back' %}
{%-   set line = env ~ ' rolled back from ' ~ short(payload.get('old')) ~ ' to ' ~ short(payload.get('new')) ~ ', pinned there,' %}
{%- elif action == 'pinned' %}
{%-   set line = env ~ ' pinned to ' ~ short(payload.get('commit')) %}
{%- elif action == 'unpinned' %}
{%-   set line = env ~ ' unpinned (it was pinned to ' ~ short(payload.get('commit')) ~ ')' %}
{%- elif action == 'frozen' %}
{%-   set line = env ~ ' frozen until ' ~ (payload.get('until') or 'thawed') %}
{%- elif action == 'thawed' %}
{%-   set line = env ~ ' thawed' %}
{%- elif action == 'backported' %}
{%-   set count = (payload.get('commits') or []) | length %}
{%-   set line = count ~ ' commit(s) of ' ~ env ~ ' back-merged into ' ~ payload.get('branch') ~ ' (' ~ payload.get('into') ~ '), ' ~ moved ~ ' (' ~ payload.get('kind') ~ ')' %}
{%- elif action == 'promoted' %}
{%-   set forced = payload.get('bypassed') or [] %}
{%-   set line = env ~ ' promoted' ~ (' (forced past its ' ~ forced | map('regex_replace', ':.*', '') | join(', ') ~ ')' if forced else '') ~ ': ' ~ payload.get('branch') ~ ' ' ~ moved %}
{%- else %}
{%-   set line = env ~ ' ' ~ action %}
{%- endif %}
{%- set who = ' by ' ~ payload['by'] if payload.get('by') else '' %}
{%- set why = ': ' ~ payload['reason'] if payload.get('reason') else '' %}

envflow_notify:
  runner.salt.cmd:
    - args:
      - fun: slack.call_hook
      - message: {{ ('envflow: ' ~ line ~ who ~ why) | yaml_dquote }}
