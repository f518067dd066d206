#!/bin/sh
# After `azd deploy`: subscribe the batch function's blob trigger to batch-in/*.jsonl.
# The webhook needs the host's blobs_extension key, which exists once the host has loaded
# the blob trigger, so this waits for it (up to 5 minutes) and then deploys eventgrid.bicep.
set -eu
: "${AZURE_RESOURCE_GROUP:?run through azd (azd up / azd deploy)}"
: "${AZURE_FUNCTION_APP_NAME:?}" "${AZURE_EVENTGRID_SYSTEM_TOPIC:?}"
app_id=$(az functionapp show -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" --query id -o tsv)
tries=0
until az rest --method post --uri "$app_id/host/default/listKeys?api-version=2024-04-01" \
    --query "systemKeys.blobs_extension" -o tsv 2>/dev/null | grep -q .; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "the blob trigger's key did not appear: is the batch function loaded?" >&2
    exit 1
  fi
  sleep 10
done
az deployment group create -g "$AZURE_RESOURCE_GROUP" --name batch-event-subscription \
  --template-file infra/eventgrid.bicep \
  --parameters functionAppName="$AZURE_FUNCTION_APP_NAME" \
               systemTopicName="$AZURE_EVENTGRID_SYSTEM_TOPIC" -o none
echo "batch-in/*.jsonl -> function batch: subscribed"
