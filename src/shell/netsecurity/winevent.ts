/**
 * Get-WinEvent for consec's Security log: `-FilterHashtable @{LogName='Security'; Id=5451}` (Id may
 * be a list; StartTime/EndTime as dates), `-LogName Security`, `-MaxEvents N`. Newest first, as on
 * Windows; no match is Windows' NoMatchingEventsFound error. Events are there only for the
 * subcategories `auditpol` enabled while the daemon ran.
 */
import { readSecurityLog } from '../../audit/log.ts';
import type { PolicyStores } from '../../policy/store.ts';
import { type CommandDef, PwshError } from '../pwsh/runtime.ts';
import { Hashtable, psObject } from '../pwsh/values.ts';

const EVENT_TYPE = 'System.Diagnostics.Eventing.Reader.EventLogRecord';

function bad(message: string): PwshError {
  return new PwshError(message, 'InvalidArgument', 'InvalidArgument', 'ArgumentException');
}

function date(v: unknown, key: string): Date {
  const d = v instanceof Date ? v : new Date(String(v));
  if (Number.isNaN(d.getTime())) throw bad(`The ${key} value "${String(v)}" is not a valid date.`);
  return d;
}

export function winEventCommands(stores: PolicyStores): CommandDef[] {
  return [
    {
      name: 'Get-WinEvent',
      params: [
        { name: 'LogName', type: 'strings', position: 0 },
        { name: 'FilterHashtable', type: 'object' },
        { name: 'MaxEvents', type: 'uint', min: 1 },
      ],
      invoke(call) {
        const filter = call.get<unknown>('FilterHashtable');
        let logName = call.get<string[]>('LogName')?.[0];
        let ids: number[] | undefined;
        let startTime: Date | undefined;
        let endTime: Date | undefined;
        if (filter !== undefined) {
          if (!(filter instanceof Hashtable)) throw bad('-FilterHashtable takes a hashtable: @{LogName=...; Id=...}');
          for (const [key, value] of filter.entries()) {
            const k = key.toLowerCase();
            if (k === 'logname') logName = String(Array.isArray(value) ? value[0] : value);
            else if (k === 'id') ids = (Array.isArray(value) ? value : [value]).map(Number);
            else if (k === 'starttime') startTime = date(value, 'StartTime');
            else if (k === 'endtime') endTime = date(value, 'EndTime');
            else if (k === 'providername') {
              if (!/^Microsoft-Windows-Security-Auditing$/i.test(String(value))) ids = [];
            } else
              throw bad(
                `The FilterHashtable key "${key}" is not supported (LogName, Id, StartTime, EndTime, ProviderName).`,
              );
          }
          if (ids?.some((i) => !Number.isInteger(i)))
            throw bad('Id takes event numbers, e.g. Id=5451 or Id=4650,4653.');
        }
        if (logName === undefined) throw bad("Give -LogName Security or -FilterHashtable @{LogName='Security'; ...}.");
        if (!/^security$/i.test(logName))
          throw new PwshError(
            `There is not an event log on the localhost computer that matches "${logName}". (consec keeps the Security log.)`,
            'NoMatchingLogsFound',
            'ObjectNotFound',
            'Exception',
          );
        const records = readSecurityLog(stores.stateDir, {
          ids,
          startTime,
          endTime,
          maxEvents: call.get<number>('MaxEvents'),
        });
        if (records.length === 0)
          throw new PwshError(
            'No events were found that match the specified selection criteria.',
            'NoMatchingEventsFound',
            'ObjectNotFound',
            'Exception',
          );
        return records.map((r) =>
          psObject(EVENT_TYPE, {
            TimeCreated: r.TimeCreated,
            Id: r.Id,
            LevelDisplayName: r.LevelDisplayName,
            Message: r.Message,
            ProviderName: r.ProviderName,
            LogName: r.LogName,
            RecordId: r.RecordId,
            TaskDisplayName: r.TaskDisplayName,
            KeywordsDisplayNames: r.KeywordsDisplayNames,
          }),
        );
      },
    },
  ];
}
