// The batch function's blob trigger (source: EventGrid) gets batch-in/*.jsonl created events
// through this subscription. Deployed after the code (azure.yaml's postdeploy hook): the
// webhook carries the host's blobs_extension system key, which exists once the host has
// loaded the blob trigger, and Event Grid validates the webhook when it is created.
param functionAppName string
param systemTopicName string

@description('The blob-triggered function: function_app.py registers functions/batch/azure.py as "batch".')
param functionName string = 'batch'

@description('The container the trigger watches (its path is batch-in/{name}.jsonl).')
param container string = 'batch-in'

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource host 'Microsoft.Web/sites/host@2024-04-01' existing = {
  parent: functionApp
  name: 'default'
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2024-06-01-preview' existing = {
  name: systemTopicName
}

resource batchSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2024-06-01-preview' = {
  parent: systemTopic
  name: 'batch-in-to-${functionName}'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionApp.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${host.listKeys().systemKeys.blobs_extension}'
        maxEventsPerBatch: 1
      }
    }
    filter: {
      includedEventTypes: ['Microsoft.Storage.BlobCreated']
      subjectBeginsWith: '/blobServices/default/containers/${container}/blobs/'
      subjectEndsWith: '.jsonl'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
